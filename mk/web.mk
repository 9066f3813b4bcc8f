# Web chat page (common/static/index.html) in headless Chromium; see docs/protocol.md.

.PHONY: test-web

## test-web: drive the chat page in Debian's /usr/bin/chromium against both servers
test-web: venv
	$(PY) -m pytest tests/test_web_page.py
