"""dlib's face recognizer as an ifadit judge (group ``recognizers``, name ``dlib``)."""

from ifadit_dlib.recognizer import DlibRecognizer

__all__ = ["DlibRecognizer"]
