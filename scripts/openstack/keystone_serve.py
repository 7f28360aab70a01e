#!/usr/bin/env python3
"""The real Keystone (PyPI keystone) on 127.0.0.1 for homeostat's tests.

The socket is bound (port 0) and its port written to HOMEOSTAT_KEYSTONE_PORT_FILE
before Keystone is imported, so that Nova can be started against it at once
while Keystone still loads. Exits when HOMEOSTAT_WATCH_PID is gone.
"""
import os
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def loading(environ, start_response):
    start_response('503 Service Unavailable', [('Content-Type', 'text/plain')])
    return [b'keystone is loading']


srv = make_server('127.0.0.1', 0, loading, server_class=Server,
                  handler_class=Quiet)
port_file = os.environ['HOMEOSTAT_KEYSTONE_PORT_FILE']
with open(port_file + '.tmp', 'w') as f:
    f.write('%d\n' % srv.server_port)
os.rename(port_file + '.tmp', port_file)

watch = int(os.environ.get('HOMEOSTAT_WATCH_PID') or 0)


def watchdog():
    while True:
        time.sleep(0.5)
        try:
            os.kill(watch, 0)
        except ProcessLookupError:
            os._exit(0)


if watch:
    threading.Thread(target=watchdog, daemon=True).start()

threading.Thread(target=srv.serve_forever, daemon=True).start()
from keystone.server import wsgi  # noqa: E402  (slow: after the bind)
srv.set_app(wsgi.initialize_public_application())
while True:
    time.sleep(3600)
