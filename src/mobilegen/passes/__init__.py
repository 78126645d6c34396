"""Mobile passes, registered by stable name. A recipe's `passes` list names them in order.

Empty in this slice: fp16, int8, relu_attention and gelu_to_silu arrive with their own issue.
"""

from __future__ import annotations

PASSES: dict[str, str] = {}  # name -> "module:function", resolved when a pass runs
