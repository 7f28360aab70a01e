#!/usr/bin/env python3
"""Prepares a fresh Keystone run for homeostat's tests, then writes what clients read.

usage: identity.py RUN_DIR   (stdlib only; reads RUN_DIR/keystone-port,
RUN_DIR/admin-password, waits for RUN_DIR/nova-ready)

In Keystone: the identity endpoint points at this run's port; a project
"homeostat"; the bootstrap admin gets role admin on it; a user
"homeostat-member" with role member; one application credential for each
(roles member, and admin). The compute service and its endpoints (public,
internal, admin; RegionOne) point at this run's Nova.

Writes RUN_DIR/clouds.yaml (no secrets), RUN_DIR/secure.yaml (passwords and
application-credential secrets, mode 0600) and RUN_DIR/state.json.
"""
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

RUN = sys.argv[1]
KS = 'http://127.0.0.1:%s/v3' % open(os.path.join(RUN, 'keystone-port')).read().strip()
ADMIN_PASSWORD = open(os.path.join(RUN, 'admin-password')).read().strip()
PROJECT = 'homeostat'
IMAGE = '155d900f-4e14-4e4c-a73d-069cbf4541e6'  # Nova's GlanceFixture image


def call(method, path, body=None, token=None, want_token=False):
    req = urllib.request.Request(
        KS + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={'Content-Type': 'application/json',
                 **({'X-Auth-Token': token} if token else {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read() or b'{}')
        return (resp.headers.get('X-Subject-Token'), data) if want_token else data


def wait(what, check, limit=120):
    end = time.time() + limit
    while time.time() < end:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.1)
    sys.exit('%s not ready within %d s' % (what, limit))


def password_token(user, password, project):
    tok, _ = call('POST', '/auth/tokens', {'auth': {
        'identity': {'methods': ['password'], 'password': {'user': {
            'name': user, 'domain': {'id': 'default'}, 'password': password}}},
        'scope': {'project': {'name': project, 'domain': {'id': 'default'}}}}},
        want_token=True)
    return tok


def one(items, what):
    if not items:
        sys.exit('keystone has no %s' % what)
    return items[0]


def main():
    wait('keystone', lambda: urllib.request.urlopen(KS, timeout=2).status == 200)
    admin_tok = password_token('admin', ADMIN_PASSWORD, 'admin')

    # The bootstrap wrote the identity endpoints with the install's port.
    for ep in call('GET', '/endpoints', token=admin_tok)['endpoints']:
        if ep['url'] != KS and '/v3' in ep['url']:
            call('PATCH', '/endpoints/' + ep['id'], {'endpoint': {'url': KS}},
                 token=admin_tok)

    roles = {r['name']: r['id'] for r in call('GET', '/roles', token=admin_tok)['roles']}
    project = call('POST', '/projects', {'project': {
        'name': PROJECT, 'domain_id': 'default'}}, token=admin_tok)['project']
    admin = one(call('GET', '/users?name=admin', token=admin_tok)['users'], 'admin user')
    call('PUT', '/projects/%s/users/%s/roles/%s' % (project['id'], admin['id'], roles['admin']),
         token=admin_tok)
    member_password = secrets.token_urlsafe(24)
    member = call('POST', '/users', {'user': {
        'name': 'homeostat-member', 'domain_id': 'default',
        'password': member_password}}, token=admin_tok)['user']
    call('PUT', '/projects/%s/users/%s/roles/%s' % (project['id'], member['id'], roles['member']),
         token=admin_tok)

    def app_cred(user, password, role):
        tok = password_token(user['name'], password, PROJECT)
        return call('POST', '/users/%s/application_credentials' % user['id'], {
            'application_credential': {'name': 'homeostat-' + role,
                                       'roles': [{'name': role}]}},
            token=tok)['application_credential']

    member_cred = app_cred(member, member_password, 'member')
    admin_cred = app_cred(admin, ADMIN_PASSWORD, 'admin')

    ready = os.path.join(RUN, 'nova-ready')
    nova_pid = int(open(os.path.join(RUN, 'nova.pid')).read())

    def nova_ready():
        if os.path.exists(ready):
            return True
        try:
            os.kill(nova_pid, 0)
        except ProcessLookupError:
            sys.exit('nova exited before it was ready (see nova.out)')
        return False
    wait('nova', nova_ready, limit=180)
    nova_state = json.load(open(ready))
    nova = 'http://127.0.0.1:%d/v2.1' % nova_state['port']
    svc = call('POST', '/services', {'service': {
        'type': 'compute', 'name': 'nova', 'enabled': True}}, token=admin_tok)['service']
    for itf in ('public', 'internal', 'admin'):
        call('POST', '/endpoints', {'endpoint': {
            'service_id': svc['id'], 'interface': itf, 'url': nova,
            'region_id': 'RegionOne', 'enabled': True}}, token=admin_tok)

    def entry(auth, auth_type='password'):
        return {'auth_type': auth_type, 'region_name': 'RegionOne',
                'interface': 'public', 'identity_api_version': 3,
                'auth': dict(auth, auth_url=KS)}

    def password_auth(user):
        return {'username': user, 'user_domain_name': 'Default',
                'project_name': PROJECT, 'project_domain_name': 'Default'}

    clouds = {
        'homeostat-admin': entry(password_auth('admin')),
        'homeostat-member': entry(password_auth('homeostat-member')),
        'homeostat-appcred': entry({'application_credential_id': member_cred['id']},
                                   'v3applicationcredential'),
        'homeostat-admin-appcred': entry({'application_credential_id': admin_cred['id']},
                                         'v3applicationcredential'),
    }
    secure = {
        'homeostat-admin': {'auth': {'password': ADMIN_PASSWORD}},
        'homeostat-member': {'auth': {'password': member_password}},
        'homeostat-appcred': {'auth': {'application_credential_secret': member_cred['secret']}},
        'homeostat-admin-appcred': {'auth': {
            'application_credential_secret': admin_cred['secret']}},
    }
    write_yaml(os.path.join(RUN, 'clouds.yaml'), clouds, 0o644)
    write_yaml(os.path.join(RUN, 'secure.yaml'), secure, 0o600)
    state = {
        'keystone_url': KS, 'nova_url': nova,
        'control_url': 'http://127.0.0.1:%d' % nova_state['control_port'],
        'computes': nova_state['computes'], 'image': IMAGE,
        'clouds_yaml': os.path.join(RUN, 'clouds.yaml'),
        'secure_yaml': os.path.join(RUN, 'secure.yaml'),
        'project_id': project['id'],
        'admin_password': ADMIN_PASSWORD, 'member_password': member_password,
        # For tests that grep logs and audit records for leaked secrets.
        'secrets': [ADMIN_PASSWORD, member_password, member_cred['secret'],
                    admin_cred['secret']],
        'run_dir': RUN,
    }
    with open(os.path.join(RUN, 'state.json.tmp'), 'w') as f:
        os.chmod(f.name, 0o600)
        json.dump(state, f, indent=1)
    os.rename(os.path.join(RUN, 'state.json.tmp'), os.path.join(RUN, 'state.json'))


def write_yaml(path, clouds, mode):
    # Block-style YAML of nested string/int maps: all clouds.yaml needs.
    lines = ['clouds:']

    def emit(m, indent):
        for k, v in m.items():
            if isinstance(v, dict):
                lines.append('%s%s:' % (' ' * indent, k))
                emit(v, indent + 2)
            else:
                lines.append('%s%s: %s' % (' ' * indent, k,
                             v if isinstance(v, int) else json.dumps(v)))
    emit(clouds, 2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'w') as f:
        f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
