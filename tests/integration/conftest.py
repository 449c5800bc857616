"""Shared pytest fixtures for relay's integration tests (see relaytest.py).

* ``certs``: one throwaway PKI per test session.
* ``start_relay``: starts ``relay serve`` (TLS with ``certs`` unless
  plain=True) and stops it at the end of the test with SIGTERM, asserting
  exit code 0 and a sanitizer-clean stderr.  Tests that stop the relay
  themselves are left alone.
* ``start_controller``: the same for ``relay-controller``.
"""

import os

import pytest

import relaytest


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return relaytest.Certs(tmp_path_factory.mktemp("certs"))


def _stopper(procs):
    errors = []
    for p in procs:
        try:
            if p.alive():
                p.stop()
            else:
                p.check_sanitizers()
        except Exception as e:  # report every child, not just the first
            errors.append(e)
        finally:
            p.kill()
    if errors:
        raise errors[0]


@pytest.fixture
def start_relay(certs):
    started = []

    def start(plain=False, extra=(), **kw):
        r = relaytest.Relay(certs=None if plain else certs, plain=plain, extra=extra, **kw)
        started.append(r)
        return r

    yield start
    _stopper(started)


@pytest.fixture
def start_controller():
    started = []

    def start(args, **kw):
        c = relaytest.Controller(args, **kw)
        started.append(c)
        return c

    yield start
    _stopper(started)


def pytest_report_header(config):
    return "relay binary: %s" % os.path.abspath(relaytest.RELAY_BIN)
