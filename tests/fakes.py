"""Stand-ins for tests that drive aiortc objects without a network."""


class FakeTransport:
    """Just enough of an RTCDtlsTransport for an RTCRtpSender that never sends."""

    class transport:  # noqa: N801
        _connection = None

    _stats_id = "transport"
    state = "new"

    def _register_rtp_sender(self, *args) -> None:
        pass
