"""Chromium pages speaking trio-sfu through the site's own module, for SFU and cluster tests."""

from __future__ import annotations

from typing import Any

from tests.peers.browser_client import Browser

# A tiny test API on top of the site's module. The RTCPeerConnection subclass only puts the
# wanted video codec first (setCodecPreferences), as an application would.
HELPERS = """async () => {
  const m = await import('/sfu-client.js');
  // Three simulcast streams (RFC 8853), lowest first as libwebrtc names them: q/h/f.
  const SIMULCAST = [{ rid: 'q', scaleResolutionDownBy: 4 },
                     { rid: 'h', scaleResolutionDownBy: 2 }, { rid: 'f' }];
  const codecFirst = (mime, simulcast = false, svc = null) => class extends RTCPeerConnection {
    addTransceiver(track, init) {
      if (simulcast && track.kind === 'video') init = { ...init, sendEncodings: SIMULCAST };
      // One stream with spatial/temporal layers, e.g. 'L3T3_KEY' (VP9 SVC)
      if (svc && track.kind === 'video') {
        init = { ...init, sendEncodings: [{ scalabilityMode: svc }] };
      }
      const t = super.addTransceiver(track, init);
      if (mime && track.kind === 'video') {
        const all = RTCRtpSender.getCapabilities('video').codecs;
        const wanted = all.filter((c) => c.mimeType === mime &&
            (mime !== 'video/H264' || (c.sdpFmtpLine || '').includes('packetization-mode=1')));
        t.setCodecPreferences([...wanted, ...all.filter((c) => !wanted.includes(c))]);
      }
      return t;
    }
  };
  window.T = {
    m, pubs: {}, sub: null, tracks: {},
    hasCodec: (mime) =>
      RTCRtpSender.getCapabilities('video').codecs.some((c) => c.mimeType === mime),
    async publish(room, user,
                  { width = 640, height = 480, codec = null, simulcast = false,
                    svc = null } = {}) {
      const stream = await navigator.mediaDevices.getUserMedia(
          { audio: true, video: { width, height, frameRate: 30 } });
      const conn = await m.connectPublisher(
          { room, user, stream, RTCPeerConnection: codecFirst(codec, simulcast, svc) });
      window.T.pubs[conn.id] = conn;
      return conn.id;
    },
    reconnects: [],
    async subscribe(room, user) {
      window.T.sub = await m.connectSubscriber({ room, user,
        onReconnect: (newId, oldId) => window.T.reconnects.push([newId, oldId]),
        onTrack: (pid, track, stream) => {
          (window.T.tracks[pid] ||= {})[track.kind] = track;
          const v = document.createElement('video');
          v.muted = true; v.autoplay = true; v.srcObject = stream;
          document.body.appendChild(v);
        } });
      return window.T.sub.id;
    },
    async received(pid) {
      // Beside the figures, how far the subscriber got, for a failure's message: told of
      // the publisher (PUB_JOIN), its video track (the renegotiation), packets, frames.
      const sub = window.T.sub;
      const track = window.T.tracks[pid]?.video;
      const where = { known: !!sub?.publishers.has(pid), track: !!track,
                      signaling: sub?.pc.signalingState,
                      sections: (sub?.pc.remoteDescription?.sdp.match(/^m=/gm) || []).length };
      if (!track) return { decoded: 0, codec: null, ...where };
      let report;
      try { report = await sub.pc.getStats(track); }
      catch (e) { return { decoded: 0, codec: null, ...where }; }  // a replaced connection's
      let decoded = 0, codecId = null, packets = 0, keyframes = 0;
      for (const r of report.values()) if (r.type === 'inbound-rtp') {
        decoded = r.framesDecoded || 0; codecId = r.codecId; packets = r.packetsReceived || 0;
        keyframes = r.keyFramesDecoded || 0; }
      const codec = codecId && report.get(codecId) ? report.get(codecId).mimeType : null;
      return { decoded, codec, packets, keyframes, ...where };
    },
    async sending(pid) {
      const out = { bitrate: 0, target: 0 };
      for (const r of (await window.T.pubs[pid].pc.getStats()).values()) {
        if (r.type === 'candidate-pair' && r.nominated && r.availableOutgoingBitrate)
          out.bitrate = r.availableOutgoingBitrate;
        if (r.type === 'outbound-rtp' && r.kind === 'video') out.target = r.targetBitrate || 0;
      }
      return out;
    },
    async inbound(pid) {  // what the subscriber decodes of pid's video
      const out = { decoded: 0, width: 0, freezes: 0, keyframes: 0 };
      const track = window.T.tracks[pid]?.video;
      if (!track) return out;
      for (const r of (await window.T.sub.pc.getStats(track)).values())
        if (r.type === 'inbound-rtp') Object.assign(out, { decoded: r.framesDecoded || 0,
          width: r.frameWidth || 0, freezes: r.freezeCount || 0,
          keyframes: r.keyFramesDecoded || 0 });
      return out;
    },
    async outbound(pid) {  // the publisher's video bytes sent per rid, and its encodings
      const conn = window.T.pubs[pid];
      const out = { bytes: {}, active: {}, told: Object.fromEntries(conn.activeLayers) };
      for (const r of (await conn.pc.getStats()).values())
        if (r.type === 'outbound-rtp' && r.kind === 'video') out.bytes[r.rid || ''] = r.bytesSent;
      for (const sender of conn.pc.getSenders())
        if (sender.track?.kind === 'video')
          for (const e of sender.getParameters().encodings) out.active[e.rid || ''] = e.active;
      return out;
    },
    sections: () => (window.T.sub.pc.remoteDescription?.sdp.match(/^m=/gm) || []).length,
    async stopPublisher(pid) { await window.T.pubs[pid].stop(); delete window.T.pubs[pid]; },
  };
  return true;
}"""


async def open_page(browser: Browser, base_url: str, name: str) -> str:
    """Open ``name`` on the server at ``base_url`` and install ``window.T``."""
    await browser.open(name, base_url.rstrip("/") + "/")
    assert await browser.eval(name, HELPERS) is True
    return name


async def decoding(browser: Browser, page: str, pid: str, frames: int = 30) -> dict[str, Any]:
    """Wait until ``page`` decoded ``frames`` frames of publisher ``pid``'s video."""
    result: dict[str, Any] = await browser.wait_for(
        page,
        f"window.T.received({pid!r})",
        lambda r: r["decoded"] >= frames,
        timeout=30,
    )
    return result
