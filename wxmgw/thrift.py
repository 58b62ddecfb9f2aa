"""The Thrift module generated at import time from ``idl/wxmgw.thrift``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import thriftpy2

IDL = Path(__file__).resolve().parent.parent / "idl" / "wxmgw.thrift"

wxmgw_thrift: Any = thriftpy2.load(str(IDL), module_name="wxmgw_thrift")
