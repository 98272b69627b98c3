"""Placeholder: the numpy fast path for big numeric bodies comes next."""

from __future__ import annotations


def parse_predict_request(body, lookup_inputs):
    return None
