"""The Talk gateway: a Nextcloud AppAPI ExApp (``live_transcription``) that captions Talk calls.

Talk calls the ExApp endpoints (PROTOCOLS.md §2); for each room that wants captions the gateway joins
the call through the High-Performance Backend (§3), receives every speaker's audio over WebRTC from
Janus, recognises it and sends ``transcript`` messages to exactly the sessions that asked for them.

Calls' finals are kept like telephony finals (persistence: the spool and persister, storage: the
segment store), and finals are translated for those who ask through Nextcloud TaskProcessing.

May use persistence, engines, storage, settings, metrics, audio and events. Must not import another
gateway.
"""
