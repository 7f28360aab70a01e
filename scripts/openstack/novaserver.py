#!/usr/bin/env python3
"""The real OpenStack Compute API (PyPI nova) on 127.0.0.1, for homeostat's tests.

One process runs what Nova's own functional tests run (nova/tests/functional):
the nova-api WSGI app (routing, schema validation, microversions, the default
policy) on a real socket, conductor, scheduler, one nova-compute per host in
HOMEOSTAT_NOVA_COMPUTES with fake.FakeLiveMigrateDriver (no hypervisor),
openstack-placement, cells v2 on in-memory sqlite. Casts stay asynchronous so
that REBOOT, powering-off, MIGRATING and REBUILD are observable. Glance,
Neutron and Cinder are Nova's own test fakes. Tokens are validated by the real
keystonemiddleware against HOMEOSTAT_KEYSTONE_URL.

Ports are chosen by the kernel (port 0) and written, with the pid, as JSON to
HOMEOSTAT_NOVA_READY once the API serves, so that parallel runs never collide.

A test-only control API (not Nova's) on its own port stops and starts a
compute service, to simulate a dead nova-compute:
  GET /computes  POST /computes/<host>/stop  POST /computes/<host>/start

The process exits by itself when HOMEOSTAT_WATCH_PID (the test process) is gone,
so that a test run that is killed leaves nothing behind.
"""
import os
import sys

# Must run before anything imports nova or eventlet: it monkey-patches (eventlet
# mode) the way the functional tests do.
import nova.tests.functional  # noqa: F401

import json
import logging
import signal

import eventlet
import eventlet.wsgi
import keystonemiddleware.auth_token

from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers

COMPUTES = [h for h in os.environ.get('HOMEOSTAT_NOVA_COMPUTES',
                                      'compute1,compute2').split(',') if h]
LOG_FILE = os.environ['HOMEOSTAT_NOVA_LOG']
READY_FILE = os.environ['HOMEOSTAT_NOVA_READY']
KEYSTONE_URL = os.environ['HOMEOSTAT_KEYSTONE_URL']
WATCH_PID = int(os.environ.get('HOMEOSTAT_WATCH_PID') or 0)
# The wheel installs api-paste.ini under <venv>/etc/nova; the test config
# fixture looks for it in the source layout.
PASTE = os.path.join(sys.prefix, 'etc', 'nova', 'api-paste.ini')

_real_filter_factory = keystonemiddleware.auth_token.filter_factory


def keystone_filter_factory(global_conf, **local_conf):
    # The real keystonemiddleware; its [keystone_authtoken] options are given
    # as paste-local options, so no nova.conf is needed.
    local_conf.update({
        'www_authenticate_uri': KEYSTONE_URL,
        'auth_url': KEYSTONE_URL,
        'auth_type': 'password',
        'username': 'nova',
        'password': os.environ['HOMEOSTAT_NOVA_SERVICE_PASSWORD'],
        'project_name': 'service',
        'user_domain_id': 'default',
        'project_domain_id': 'default',
        'service_token_roles_required': 'true',
    })
    return _real_filter_factory(global_conf, **local_conf)


keystonemiddleware.auth_token.filter_factory = keystone_filter_factory

# nova.test.TestCase turns some warnings into exceptions; in a long-running
# server a DeprecationWarning from a newer library would become an HTTP 500.
import fixtures as _fixtures  # noqa: E402
import warnings as _warnings  # noqa: E402


class _QuietWarnings(_fixtures.Fixture):
    def _setUp(self):
        _warnings.simplefilter('ignore')


nova_fixtures.WarningsFixture = _QuietWarnings


class Cloud(integrated_helpers._IntegratedTestBase):
    CAST_AS_CALL = False        # asynchronous casts: observable transitions
    ADMIN_API = True
    STUB_KEYSTONE = False       # the real keystonemiddleware (above)
    microversion = 'latest'

    def _setup_compute_service(self):
        self.flags(compute_driver='fake.FakeLiveMigrateDriver')
        first = None
        for host in COMPUTES:
            svc = self._start_compute(host)
            first = first or svc
        return first

    def _setup_services(self):
        # Runs after the test ConfFixture, so these overrides stick.
        self.flags(api_paste_config=PASTE, group='wsgi')
        # A stopped compute shows "down" after service_down_time; short, so
        # that a test sees it without waiting a minute.
        self.flags(report_interval=2, service_down_time=6)
        # A test binary boots more servers than the default quota (10) allows.
        self.flags(instances=-1, cores=-1, ram=-1, group='quota')
        super()._setup_services()

    def runTest(self):
        pass


def control_app(cloud):
    """Test-only: stop or start the nova-compute service of a host."""
    from unittest import mock
    stopped = set()

    def app(environ, start_response):
        parts = [p for p in environ['PATH_INFO'].split('/') if p]
        method = environ['REQUEST_METHOD']
        code, body = '404 Not Found', {'error': 'not found'}
        try:
            if parts == ['computes'] and method == 'GET':
                code, body = '200 OK', {
                    h: ('stopped' if h in stopped else 'running')
                    for h in cloud.computes}
            elif (len(parts) == 3 and parts[0] == 'computes' and
                  parts[1] in cloud.computes and method == 'POST'):
                host, action = parts[1], parts[2]
                svc = cloud.computes[host]
                if action == 'stop' and host not in stopped:
                    svc.stop()
                    stopped.add(host)
                elif action == 'start' and host in stopped:
                    with mock.patch('nova.virt.driver.load_compute_driver',
                                    return_value=svc.manager.driver):
                        cloud.computes[host] = cloud.start_service(
                            'compute', host=host, cell_name='cell1')
                    stopped.discard(host)
                elif action not in ('stop', 'start'):
                    raise ValueError('unknown action %s' % action)
                code, body = '200 OK', {host: ('stopped' if host in stopped
                                               else 'running')}
        except Exception as e:  # report it and keep serving
            logging.getLogger(__name__).exception('control api')
            code, body = '500 Internal Server Error', {'error': repr(e)}
        data = json.dumps(body).encode()
        start_response(code, [('Content-Type', 'application/json'),
                              ('Content-Length', str(len(data)))])
        return [data]
    return app


def main():
    cloud = Cloud('runTest')
    cloud.setUp()

    # The test logging fixture keeps every line in memory; a server wants a file.
    fh = logging.FileHandler(LOG_FILE)
    fh.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s %(name)s %(message)s'))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    root.addHandler(fh)

    access_log = logging.getLogger('nova.access')

    class _L(object):
        def write(self, msg):
            access_log.info(msg.rstrip())

    api_sock = eventlet.listen(('127.0.0.1', 0))
    ctl_sock = eventlet.listen(('127.0.0.1', 0))
    server = eventlet.spawn(eventlet.wsgi.server, api_sock,
                            cloud.api_fixture.app(), log=_L(),
                            log_output=True, keepalive=True)
    ctl = eventlet.spawn(eventlet.wsgi.server, ctl_sock, control_app(cloud),
                         log=_L(), log_output=True)
    tmp = READY_FILE + '.tmp'
    with open(tmp, 'w') as f:
        json.dump({'port': api_sock.getsockname()[1],
                   'control_port': ctl_sock.getsockname()[1],
                   'pid': os.getpid(), 'computes': COMPUTES}, f)
    os.rename(tmp, READY_FILE)

    stop = {'now': False}

    def _stop(signum, frame):
        stop['now'] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop['now']:
        eventlet.sleep(0.5)
        if WATCH_PID:
            try:
                os.kill(WATCH_PID, 0)
            except ProcessLookupError:
                break
    server.kill()
    ctl.kill()
    os._exit(0)


if __name__ == '__main__':
    try:
        main()
    except BaseException:
        import traceback
        traceback.print_exc(file=sys.__stderr__)
        sys.__stderr__.flush()
        os._exit(1)
