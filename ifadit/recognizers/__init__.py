"""Recognizers that judge anonymization (plugin group ``recognizers``): embeddings plus a face-found mask,
each with its own input convention and verification rule. See :mod:`ifadit.recognizers.base`."""

from ifadit.recognizers.base import (
    Calibration,
    EncoderRecognizer,
    InputConvention,
    Recognition,
    Recognizer,
    Verification,
    as_verification,
    calibrate_threshold,
)
from ifadit.recognizers.spec import build_recognizer, parse_recognizer_spec, recognizer_label

__all__ = [
    "Calibration",
    "EncoderRecognizer",
    "InputConvention",
    "Recognition",
    "Recognizer",
    "Verification",
    "as_verification",
    "build_recognizer",
    "calibrate_threshold",
    "parse_recognizer_spec",
    "recognizer_label",
]
