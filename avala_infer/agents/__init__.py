"""Webhook delivery for agents: sign and POST one delivery (:mod:`~avala_infer.agents.delivery`) and the background
loop that sends the store's due deliveries with retries (:class:`Dispatcher`)."""

from avala_infer.agents.delivery import RetryPolicy, deliver_test, parse_retry_after, sign
from avala_infer.agents.dispatcher import Dispatcher

__all__ = ["Dispatcher", "RetryPolicy", "deliver_test", "parse_retry_after", "sign"]
