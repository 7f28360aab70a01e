#!/usr/bin/env python3
"""A few Nova calls for scripts/demo.sh (not named nova.py: that would shadow the
nova package for novaserver.py, which runs from this directory), as the harness' member (stdlib only).

usage: demo_nova.py STATE_JSON boot NAME    -> boots it (no network), waits for ACTIVE, prints its id
       demo_nova.py STATE_JSON actions ID   -> prints Nova's instance actions and the server's state
"""
import json
import sys
import time
import urllib.request

state = json.load(open(sys.argv[1]))


def token():
    body = {'auth': {'identity': {'methods': ['password'], 'password': {'user': {
        'name': 'homeostat-member', 'domain': {'id': 'default'},
        'password': state['member_password']}}},
        'scope': {'project': {'name': 'homeostat', 'domain': {'id': 'default'}}}}}
    req = urllib.request.Request(state['keystone_url'] + '/auth/tokens', method='POST',
                                 data=json.dumps(body).encode(),
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req) as r:
        return r.headers['X-Subject-Token']


TOKEN = token()


def call(method, path, body=None):
    req = urllib.request.Request(state['nova_url'] + path, method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={'Content-Type': 'application/json',
                                          'X-Auth-Token': TOKEN,
                                          'OpenStack-API-Version': 'compute 2.100'})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b'{}')


if sys.argv[2] == 'boot':
    sid = call('POST', '/servers', {'server': {
        'name': sys.argv[3], 'imageRef': state['image'], 'flavorRef': '1',
        'networks': 'none'}})['server']['id']
    for _ in range(600):
        s = call('GET', '/servers/' + sid)['server']
        if s['status'] == 'ACTIVE' and not s['OS-EXT-STS:task_state']:
            break
        if s['status'] == 'ERROR':
            sys.exit('server %s went to ERROR' % sid)
        time.sleep(0.1)
    print(sid)
elif sys.argv[2] == 'actions':
    sid = sys.argv[3]
    s = call('GET', '/servers/' + sid)['server']
    print('%s: status %s, task %s' % (s['name'], s['status'], s['OS-EXT-STS:task_state']))
    for a in reversed(call('GET', '/servers/%s/os-instance-actions' % sid)['instanceActions']):
        print('  %s  %-8s request %s  user %s' % (a['start_time'], a['action'],
                                                   a['request_id'], a['user_id']))
else:
    sys.exit(__doc__)
