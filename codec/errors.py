"""The one exception type the codec raises for problems a user can fix."""


class VsaeError(Exception):
    """Bad input (video, model file, flag): the CLI prints it as one line, without a traceback."""


class BundleError(VsaeError):
    """A model bundle that is corrupt, truncated, foreign, oversized or inconsistent."""
