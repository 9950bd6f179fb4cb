"""A real SMTP server for Kiln's mail tests (aiosmtpd).

Usage: python3 server.py PORT MAILDIR [USER:PASSWORD]

Listens on 127.0.0.1:PORT and stores every message it accepts in the
Maildir MAILDIR (one file per message in MAILDIR/new, with X-RcptTo and
X-MailFrom headers giving the envelope). With USER:PASSWORD, clients must
log in (PLAIN or LOGIN) before sending; TLS is not required for it here.
Prints "ready" once it accepts connections; runs until killed.
"""

import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    port = int(sys.argv[1])
    maildir = sys.argv[2]
    login = sys.argv[3] if len(sys.argv) > 3 else None
    kwargs = {}
    if login:
        user, password = login.split(":", 1)

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (
                auth_data.login.decode() == user and auth_data.password.decode() == password
            )
            return AuthResult(success=ok)

        kwargs = dict(authenticator=authenticate, auth_required=True, auth_require_tls=False)
    controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
