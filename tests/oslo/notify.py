"""Publishes notifications through the real oslo.messaging, exactly as nova does.

usage: notify.py TRANSPORT_URL CONTROL_EXCHANGE FILE.jsonl

Each line of FILE is a notification (`event_type`, `payload`, `priority`, `publisher_id`,
`timestamp`, as nova's samples and flowcast's examples have them). It is sent with
`oslo_messaging.Notifier(transport, driver='messagingv2', publisher_id=..., topics=['notifications'])`
and the method of its priority (`info`, `error`, ...). oslo stamps each message with its own
`message_id` and with `timeutils.utcnow()`; the line's `timestamp` is given to oslo through
`oslo_utils.timeutils.set_time_override`, oslo's own clock override for tests, so that the
envelope carries the time the notification describes.
"""
import datetime
import json
import sys
import warnings

warnings.simplefilter("ignore")

from oslo_config import cfg  # noqa: E402
import oslo_messaging  # noqa: E402
from oslo_utils import timeutils  # noqa: E402


def main():
    url, exchange, path = sys.argv[1:4]
    oslo_messaging.set_transport_defaults(control_exchange=exchange)
    conf = cfg.ConfigOpts()
    conf([])
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    notifiers = {}
    sent = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            n = json.loads(line)
            publisher = n.get("publisher_id", "compute.host1")
            notifier = notifiers.get(publisher)
            if notifier is None:
                notifier = oslo_messaging.Notifier(
                    transport,
                    driver="messagingv2",
                    publisher_id=publisher,
                    topics=["notifications"],
                )
                notifiers[publisher] = notifier
            ts = n.get("timestamp")
            if isinstance(ts, str):
                timeutils.set_time_override(
                    datetime.datetime.strptime(ts.replace("T", " ").rstrip("Z"), "%Y-%m-%d %H:%M:%S.%f")
                    if "." in ts
                    else datetime.datetime.strptime(ts.replace("T", " ").rstrip("Z"), "%Y-%m-%d %H:%M:%S")
                )
            priority = n.get("priority", "INFO").lower()
            getattr(notifier, priority)({}, n["event_type"], n["payload"])
            sent += 1
    timeutils.clear_time_override()
    transport.cleanup()
    print(sent)


if __name__ == "__main__":
    main()
