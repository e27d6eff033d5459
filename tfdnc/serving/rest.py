"""TF Serving's REST API (port 8501) through the standard library's urllib."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from tfdnc.exporting.endpoints import find_signature
from tfdnc.serving.client import ServingClient
from tfdnc.serving.errors import code_for_http_status
from tfdnc.serving.tensors import from_json_value, normalize_signature_defs, to_json_value

REQUEST_FORMATS = ("inputs", "instances")


class RestClient(ServingClient):
    """Embeds and searches through TF Serving's REST API.

    Args:
        url: the server, e.g. "http://localhost:8501".
        model, version, version_label, timeout, retries, backoff: see
            `ServingClient`.
        request_format: "inputs" (columnar: one list per input tensor) or
            "instances" (row format: one object per example).

    Examples:
        >>> client = RestClient("http://localhost:8501", model="dnc")  # doctest: +SKIP
        >>> embeddings = client.embed(["query.jpg"])        # (1, d)  # doctest: +SKIP
        >>> hits = client.search(["query.jpg"]).to_records()  # doctest: +SKIP
    """

    def __init__(self, url: str = "http://localhost:8501", model: str = "dnc", *,
                 request_format: str = "inputs", **kwargs: Any):
        super().__init__(model, **kwargs)
        if request_format not in REQUEST_FORMATS:
            raise ValueError(
                f"RestClient: `request_format` must be one of {REQUEST_FORMATS}, got {request_format!r}"
            )
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RestClient: `url` must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.request_format = request_format

    # --- URLs ----------------------------------------------------------------
    @property
    def model_url(self) -> str:
        url = f"{self.url}/v1/models/{self.model}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        elif self.version_label is not None:
            url += f"/labels/{self.version_label}"
        return url

    # --- transport -----------------------------------------------------------
    def _predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        if self.request_format == "inputs":
            body = {"inputs": {name: to_json_value(array) for name, array in inputs.items()}}
        else:
            count = len(next(iter(inputs.values())))
            if any(len(a) != count for a in inputs.values()):
                raise ValueError(
                    f"{self._where(signature)}: the row (instances) format needs the same batch "
                    f"size for every input, got { {k: len(v) for k, v in inputs.items()} }"
                )
            body = {"instances": [
                {name: to_json_value(array[i]) for name, array in inputs.items()} for i in range(count)
            ]}
        body["signature_name"] = signature
        answer = self._request(f"{self.model_url}:predict", body, signature)
        return self._parse_predict(answer, signature)

    def _status(self) -> list[dict]:
        answer = self._request(self.model_url, None, None)
        return [
            {
                "version": int(s["version"]),
                "state": s.get("state", "UNKNOWN"),
                "error": s.get("status", {}).get("error_message", ""),
            }
            for s in answer.get("model_version_status", [])
        ]

    def _metadata(self) -> dict:
        answer = self._request(f"{self.model_url}/metadata", None, None)
        try:
            defs = answer["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError):
            raise self._error(f"unexpected metadata answer {str(answer)[:200]}", "INTERNAL") from None
        return normalize_signature_defs(defs)

    def _parse_predict(self, answer: dict, signature: str) -> dict[str, np.ndarray]:
        if "outputs" in answer:
            outputs = answer["outputs"]
            if not isinstance(outputs, dict):
                outputs = {_single_output(signature): outputs}
            return {name: from_json_value(value) for name, value in outputs.items()}
        if "predictions" in answer:
            rows = answer["predictions"]
            if rows and isinstance(rows[0], dict):
                return {name: from_json_value([row[name] for row in rows]) for name in rows[0]}
            return {_single_output(signature): from_json_value(rows)}
        raise self._error(f"answer has neither 'outputs' nor 'predictions': {str(answer)[:200]}",
                          "INTERNAL", signature)

    def _request(self, url: str, body: dict | None, signature: str | None) -> dict:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            url, data=data, method="POST" if data is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                details = json.loads(text).get("error", text)
            except (json.JSONDecodeError, AttributeError):
                details = text or err.reason
            raise self._error(f"HTTP {err.code}: {details}", code_for_http_status(err.code),
                              signature) from None
        except (socket.timeout, TimeoutError):
            raise self._error(f"no answer from {url} within {self.timeout:g} s",
                              "DEADLINE_EXCEEDED", signature) from None
        except (urllib.error.URLError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise self._error(f"no answer from {url} within {self.timeout:g} s",
                                  "DEADLINE_EXCEEDED", signature) from None
            raise self._error(f"cannot reach {url}: {reason}", "UNAVAILABLE", signature) from None
        except json.JSONDecodeError as err:
            raise self._error(f"answer from {url} is not JSON: {err}", "INTERNAL", signature) from None


def _single_output(signature: str) -> str:
    """The output name TF Serving leaves out of the answer of a one-output signature.

    Its registered declaration gives it; "outputs" for a signature tfdnc does not know.
    """
    declared = find_signature(signature)
    return declared.single_output if declared is not None and declared.single_output else "outputs"
