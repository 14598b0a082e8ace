"""Rewrites streamed answers event by event: restores pseudonyms and (optionally) redacts new PII
in chat/completions chunks and Responses API events, flushing held-back text when a field ends.

Works on parsed event payloads (dicts); SSE framing is the policy's business.
"""

from __future__ import annotations

from typing import Any

from proxy.pii.engine import Redaction
from proxy.pii.restore import OutputScanner, StreamRestorer, restore


class TextFilter:
    """One streamed field: output scan (bounded hold-back), then placeholder restoration."""

    def __init__(self, redaction: Redaction, *, scan: bool, json_escape: bool = False) -> None:
        holdback = redaction.engine.holdback
        self._scanner = OutputScanner(redaction, holdback) if scan else None
        self._restorer = StreamRestorer(redaction.pseudonyms, json_escape=json_escape)
        self.emitted: list[str] = []

    def feed(self, delta: str) -> str:
        text = self._scanner.feed(delta) if self._scanner is not None else delta
        out = self._restorer.feed(text)
        self.emitted.append(out)
        return out

    def flush(self) -> str:
        text = self._scanner.flush() if self._scanner is not None else ""
        out = self._restorer.feed(text) + self._restorer.flush()
        self.emitted.append(out)
        return out

    def text(self) -> str:
        return "".join(self.emitted)


class _Filters:
    def __init__(self, redaction: Redaction, scan: bool) -> None:
        self.redaction = redaction
        self.scan = scan
        self.open: dict[tuple[Any, ...], TextFilter] = {}

    def get(self, key: tuple[Any, ...], json_escape: bool = False) -> TextFilter:
        found = self.open.get(key)
        if found is None:
            found = self.open[key] = TextFilter(self.redaction, scan=self.scan,
                                                json_escape=json_escape)
        return found

    def whole(self, text: str, json_escape: bool = False) -> str:
        out = self.redaction.output_text(text) if self.scan else text
        return restore(out, self.redaction.pseudonyms, json_escape=json_escape)


class ChatStream:
    """`chat.completion.chunk` and legacy completions chunks (`choices[].text`)."""

    def __init__(self, redaction: Redaction, *, scan: bool) -> None:
        self._filters = _Filters(redaction, scan)
        self._template: dict[str, Any] | None = None

    def chunk(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        self._template = {k: v for k, v in payload.items() if k not in ("choices", "usage")}
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict):
                self._choice(choice)
        return [payload]

    def _choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        delta = choice.get("delta")
        holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
        text = holder.get(key)
        if isinstance(text, str) and text:
            holder[key] = self._filters.get(("c", index)).feed(text)
        if isinstance(delta, dict):
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                args = function.get("arguments") if isinstance(function, dict) else None
                if isinstance(function, dict) and isinstance(args, str) and args:
                    slot = self._filters.get(("t", index, call.get("index", 0)), True)
                    function["arguments"] = slot.feed(args)
        if choice.get("finish_reason") is not None:
            self._flush_into(index, choice)

    def _flush_into(self, index: Any, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        for key in [k for k in self._filters.open if k[1] == index]:
            rest = self._filters.open.pop(key).flush()
            if not rest:
                continue
            if key[0] == "c" and isinstance(delta, dict):
                delta["content"] = (delta.get("content") or "") + rest
            elif key[0] == "c":
                choice["text"] = (choice.get("text") or "") + rest
            elif isinstance(delta, dict):
                calls = delta.setdefault("tool_calls", [])
                calls.append({"index": key[2], "function": {"arguments": rest}})

    def finish(self) -> list[dict[str, Any]]:
        """Chunks carrying whatever is still held when the stream ends without finish_reason."""
        if not self._filters.open or self._template is None:
            return []
        choices: dict[Any, dict[str, Any]] = {}
        for key in list(self._filters.open):
            choice = choices.setdefault(key[1], {"index": key[1], "delta": {},
                                                 "finish_reason": None})
            if self._template.get("object") == "text_completion":
                choice.pop("delta", None)
            self._flush_into(key[1], choice)
        return [{**self._template, "choices": list(choices.values())}]


class ResponsesStream:
    """Responses API events: text and argument deltas, their `done` events and final objects."""

    def __init__(self, redaction: Redaction, *, scan: bool) -> None:
        self._filters = _Filters(redaction, scan)
        self._done: dict[tuple[Any, ...], str] = {}

    def event(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        kind = payload.get("type")
        item = payload.get("item_id")
        if kind == "response.output_text.delta":
            key = ("text", item, payload.get("content_index", 0))
            payload["delta"] = self._filters.get(key).feed(str(payload.get("delta") or ""))
        elif kind == "response.function_call_arguments.delta":
            key = ("args", item, 0)
            payload["delta"] = self._filters.get(key, True).feed(str(payload.get("delta") or ""))
        elif kind == "response.output_text.done":
            return self._close(payload, ("text", item, payload.get("content_index", 0)), "text")
        elif kind == "response.function_call_arguments.done":
            return self._close(payload, ("args", item, 0), "arguments")
        elif kind == "response.content_part.done" and isinstance(payload.get("part"), dict):
            self._fix_part(item, payload.get("content_index", 0), payload["part"])
        elif kind == "response.output_item.done" and isinstance(payload.get("item"), dict):
            self._fix_item(payload["item"])
        elif isinstance(payload.get("response"), dict):
            for output in payload["response"].get("output") or ():
                if isinstance(output, dict):
                    self._fix_item(output)
        return [payload]

    def _close(self, payload: dict[str, Any], key: tuple[Any, ...], field: str
               ) -> list[dict[str, Any]]:
        slot = self._filters.open.pop(key, None)
        events: list[dict[str, Any]] = []
        if slot is None:
            self._done[key] = self._filters.whole(str(payload.get(field) or ""), key[0] == "args")
        else:
            rest = slot.flush()
            if rest:
                delta_type = payload["type"].replace(".done", ".delta")
                events.append({k: v for k, v in payload.items() if k not in (field, "type")}
                              | {"type": delta_type, "delta": rest})
            self._done[key] = slot.text()
        payload[field] = self._done[key]
        return [*events, payload]

    def _fix_part(self, item: Any, index: Any, part: dict[str, Any]) -> None:
        if isinstance(part.get("text"), str):
            done = self._done.get(("text", item, index))
            part["text"] = done if done is not None else self._filters.whole(part["text"])

    def _fix_item(self, item: dict[str, Any]) -> None:
        item_id = item.get("id")
        if item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
            done = self._done.get(("args", item_id, 0))
            item["arguments"] = (done if done is not None
                                 else self._filters.whole(item["arguments"], True))
        for index, part in enumerate(item.get("content") or ()):
            if isinstance(part, dict):
                self._fix_part(item_id, index, part)

    def finish(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for key, slot in list(self._filters.open.items()):
            rest = slot.flush()
            if rest:
                kind = "output_text" if key[0] == "text" else "function_call_arguments"
                events.append({"type": f"response.{kind}.delta", "item_id": key[1],
                               "content_index": key[2], "delta": rest})
        self._filters.open.clear()
        return events
