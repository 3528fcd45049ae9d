"""CSV for spreadsheets: a cell that starts with = + - @ (or a tab or carriage return) is opened by Excel,
LibreOffice and Google Sheets as a formula, so text that came from a file, a user or the database (a DICOM
body part, a file name, a comment) could run one. Every CSV RadLens writes goes through here."""

from __future__ import annotations

import csv

__all__ = ["defused", "SafeDictWriter"]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defused(value: object) -> object:
    """Text a spreadsheet would run as a formula, prefixed with a quote; anything else unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


class SafeDictWriter(csv.DictWriter):
    """csv.DictWriter whose every value is defused."""

    def writerow(self, rowdict):
        return super().writerow({k: defused(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts):
        for row in rowdicts:
            self.writerow(row)

