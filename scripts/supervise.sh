#!/usr/bin/env bash
# supervise.sh COMMAND...: run COMMAND, and start it again whenever it dies with an error.
#
# A Celery worker exits (code 1) when its Redis broker vanishes at the wrong moment (kombu fails
# while restoring unacknowledged messages); in production docker-compose's restart policy brings
# it back, and under `make dev` and the tests this loop does. A clean exit or SIGTERM/SIGINT
# stops it for good.
set -u
child=0
stopping=0
stop() { stopping=1; [ "$child" -ne 0 ] && kill -TERM "$child" 2>/dev/null; }
trap stop TERM INT
while :; do
    "$@" &
    child=$!
    wait "$child"; code=$?
    # `wait` returns early when a trapped signal arrives: wait for the child to really finish.
    while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done
    [ "$stopping" -eq 1 ] || [ "$code" -eq 0 ] && exit "$code"
    echo "supervise: '$1' exited with $code; starting it again in 2 s" >&2
    sleep 2
done
