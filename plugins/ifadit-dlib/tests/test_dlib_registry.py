"""The plugin reaches ifadit only through its entry point, like any third-party recognizer."""

from __future__ import annotations

import pytest
from ifadit_dlib import DlibRecognizer

from ifadit import registry
from ifadit.recognizers import Recognizer, build_recognizer, recognizer_label


def test_installed_plugin_is_registered_under_dlib() -> None:
    info = registry.available("recognizers")["dlib"]
    assert info.distribution == "ifadit-dlib"
    assert info.value == "ifadit_dlib.recognizer:DlibRecognizer"
    assert registry.get("recognizers", "dlib") is DlibRecognizer


def test_built_from_a_command_line_spec() -> None:
    judge = build_recognizer("dlib:upsample=2,threshold=0.5")
    assert isinstance(judge, Recognizer)
    assert judge.upsample == 2 and judge.rule.threshold == 0.5
    assert recognizer_label("dlib:upsample=2") == "dlib"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="detector must be 'hog' or 'cnn'"):
        DlibRecognizer(detector="haar")
