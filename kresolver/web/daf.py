"""The firewall on the web: the seed's REST API at /daf and the dashboard's rule panel.

    GET    /daf                      every rule (JSON list)
    POST   /daf                      add the rule in the body; 400 says what is wrong
    GET    /daf/<id>                 one rule
    DELETE /daf/<id>                 delete it
    PATCH  /daf/<id>/active/<bool>   suspend (false) or resume (true) it

The body is the rule text as typed (``curl -d 'qname = example.com deny'``), or JSON
``{"rule": "..."}``.  Changing methods need the http module's token when one is set.
"""

from __future__ import annotations

import json
from typing import Any

from kresolver.web.app import body_text

PATH = "/daf"
TITLE = "Application firewall"

SNIPPET = """
<form id="daf-form" autocomplete="off">
  <input id="daf-rule" size="64" placeholder="qname = example.com AND src = 192.0.2.0/24 deny">
  <button type="submit">Add rule</button>
  <span id="daf-error" class="error"></span>
</form>
<table id="daf-rules">
  <thead><tr><th>id</th><th>rule</th><th>matches</th><th>state</th><th></th></tr></thead>
  <tbody></tbody>
</table>
<p class="empty" id="daf-empty">No firewall rules.</p>
<script>
document.addEventListener('DOMContentLoaded', function () {
  'use strict';
  const body = document.querySelector('#daf-rules tbody');
  const error = document.getElementById('daf-error');

  async function call(method, url, data) {
    const response = await kres.fetch(url, { method: method, body: data });
    const reply = await response.json().catch(() => ({}));
    error.textContent = response.ok ? '' : (reply.error || response.statusText);
    return response.ok;
  }

  function button(label, onClick) {
    const b = document.createElement('button');
    b.textContent = label;
    b.addEventListener('click', onClick);
    return b;
  }

  function render(rules) {
    body.textContent = '';
    for (const rule of rules) {
      const row = body.insertRow();
      row.dataset.id = rule.id;
      row.insertCell().textContent = rule.id;
      const info = row.insertCell();
      info.textContent = rule.info;
      if (!rule.active) info.className = 'suspended';
      row.insertCell().textContent = rule.count;
      row.insertCell().textContent = rule.active ? 'active' : 'suspended';
      const actions = row.insertCell();
      actions.appendChild(button(rule.active ? 'suspend' : 'resume', async () => {
        await call('PATCH', '/daf/' + rule.id + '/active/' + !rule.active);
        refresh();
      }));
      actions.appendChild(button('delete', async () => {
        await call('DELETE', '/daf/' + rule.id);
        refresh();
      }));
    }
    document.getElementById('daf-empty').hidden = rules.length > 0;
  }

  async function refresh() {
    const response = await kres.fetch('/daf');
    if (response.ok) render(await response.json());
  }

  document.getElementById('daf-form').addEventListener('submit', async event => {
    event.preventDefault();
    const input = document.getElementById('daf-rule');
    if (await call('POST', '/daf', input.value)) input.value = '';
    refresh();
  });
  let ticks = 0;
  kres.onUpdate(() => { if (++ticks % 2 === 0) refresh(); });
  refresh();
});
</script>
"""


class DafResource:
    """Routes /daf requests to the firewall module."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def serve(self, request: Any) -> Any:
        from kresolver.modules.daf import RuleError

        parts = [p for p in request.path.decode("utf-8", "replace").split("/") if p]
        method = request.method
        self.module.ensure_restored()
        if len(parts) == 1:
            if method == b"GET":
                return self.module.api.rules
            if method == b"POST":
                try:
                    return self.module.add(rule_text(request)).describe()
                except RuleError as error:
                    return 400, {"error": str(error)}
            return 405, {"error": "use GET or POST on /daf"}
        try:
            rule_id = int(parts[1])
        except ValueError:
            return 400, {"error": f"rule id must be a number, not {parts[1]!r}"}
        rule = self.module.table.get(rule_id)
        if rule is None:
            return 404, {"error": f"no rule {rule_id}"}
        if len(parts) == 2:
            if method == b"GET":
                return rule.describe()
            if method == b"DELETE":
                self.module.delete(rule_id)
                return {"id": rule_id, "deleted": True}
            return 405, {"error": "use GET or DELETE on /daf/<id>"}
        if len(parts) == 4 and method == b"PATCH":
            prop, value = parts[2], parts[3].lower()
            if prop != "active":
                return 400, {"error": f"cannot change {prop!r}; only 'active'"}
            if value not in ("true", "false"):
                return 400, {"error": f"active is true or false, not {parts[3]!r}"}
            return self.module.set_active(rule_id, value == "true").describe()
        return 404, {"error": "expected /daf, /daf/<id> or PATCH /daf/<id>/active/<bool>"}


def rule_text(request: Any) -> str:
    """The rule in a POST body: plain text, or JSON {"rule": "..."}."""
    text = body_text(request).strip()
    content_type = request.getHeader(b"content-type") or b""
    if content_type.startswith(b"application/json"):
        from kresolver.modules.daf import RuleError

        try:
            data = json.loads(text)
        except ValueError as error:
            raise RuleError(f"body is not JSON: {error}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rule"), str):
            raise RuleError('a JSON body is {"rule": "..."}')
        return data["rule"]
    return text


def publish(http: Any, module: Any) -> None:
    http.endpoints[PATH] = ("application/json", DafResource(module).serve, None)
    http.snippets[PATH] = (TITLE, SNIPPET)


def unpublish(http: Any) -> None:
    http.endpoints.pop(PATH, None)
    http.snippets.pop(PATH, None)
