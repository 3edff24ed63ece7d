"""Contract checks for plugin authors: hold a flow, key scheme or recognizer to what ifadit assumes.

Plain functions that raise ``AssertionError`` with a message naming the component and the property, so
they run under any test runner (pytest is not imported here)::

    from ifadit.testing import check_flow

    def test_my_flow_keeps_the_contract():
        check_flow(MyFlow)  # or a registered name, a functools.partial, or a built instance

Each ``check_*`` runs every check of its kind and returns a :class:`ContractReport`; the single checks are
importable too and listed by name in ``FLOW_CHECKS``, ``KEY_SCHEME_CHECKS`` and ``RECOGNIZER_CHECKS``
(handy to parametrise a test over them). ifadit's own tests run the same checks on every built-in.
"""

from ifadit.testing._common import ContractReport
from ifadit.testing.flows import (
    FLOW_CHECKS,
    SLOW_FLOW_CHECKS,
    FlowContract,
    check_float32_under_autocast,
    check_flow,
    check_input_validation,
    check_key_sensitivity,
    check_logdet_matches_jacobian,
    check_round_trip_after_training,
    check_round_trip_float32,
    check_round_trip_float64,
    check_state_dict_round_trip,
    check_unconditional,
    train_briefly,
)
from ifadit.testing.keys import KEY_SCHEME_CHECKS, KeySchemeContract, check_key_scheme, secret_for
from ifadit.testing.recognizers import RECOGNIZER_CHECKS, RecognizerContract, check_recognizer

__all__ = [
    "FLOW_CHECKS",
    "KEY_SCHEME_CHECKS",
    "RECOGNIZER_CHECKS",
    "SLOW_FLOW_CHECKS",
    "ContractReport",
    "FlowContract",
    "KeySchemeContract",
    "RecognizerContract",
    "check_float32_under_autocast",
    "check_flow",
    "check_input_validation",
    "check_key_scheme",
    "check_key_sensitivity",
    "check_logdet_matches_jacobian",
    "check_recognizer",
    "check_round_trip_after_training",
    "check_round_trip_float32",
    "check_round_trip_float64",
    "check_state_dict_round_trip",
    "check_unconditional",
    "secret_for",
    "train_briefly",
]
