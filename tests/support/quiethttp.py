"""An HTTP server for tests whose clients may give up (a timeout, a refused TLS handshake, a
cut connection): that is no error of the server's, so no traceback on the test's stderr."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)
