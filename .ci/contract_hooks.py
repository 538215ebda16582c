"""Schemathesis hooks for .ci/contract.sh: every problem+json answer carries a `detail`."""
import schemathesis


@schemathesis.check
def problem_has_detail(ctx, response, case):
    content_type = response.headers.get("content-type", [""])
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else ""
    if "application/problem+json" not in content_type:
        return None
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str) or not body["detail"]:
        raise AssertionError(f"a problem+json answer without a detail: {body!r}")
    return None
