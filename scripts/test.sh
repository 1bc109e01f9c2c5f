#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
# Two workers (pytest-xdist; LIFEBOAT_TEST_WORKERS=0 runs in one process): the tests that boot guests on the recovery
# host all run on one of them, one after the other (tests/conftest.py), beside the rest of the suite on the other.
# A crashed worker (pytest-timeout ends a hung test's process) stops the run: a restarted worker loses the rest of
# its group and the run would wait for ever. A test about to time out leaves its tasks' stacks in
# .cache/test-timeouts/.
workers=${LIFEBOAT_TEST_WORKERS:-2}
par=()
if [ "$workers" != 0 ]; then par=(-n "$workers" --dist loadgroup --max-worker-restart=0); fi
set +e
.venv/bin/python -m pytest -q -rs --durations=25 "${par[@]}" "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, never a silent pass.
if [ $rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi
exit $rc
