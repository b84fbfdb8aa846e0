"""The agent's web interface, for partners without an information system of their own.

A person (a school's social worker, a hotel's front desk, a CRIP case officer) logs in with
a password and, where the partner may read identity or medical sections, a TOTP code; reads
the inbox (FLASH first, deadlines counting down), opens an event (decrypted on demand, the
opening logged), takes it in charge or declines it, composes an event from a form generated
from its schema and follows what it sent. French throughout. Off by default: the ``[web]``
section of the agent's settings (:class:`~relais.agents.settings.WebSettings`); people are
managed with ``relais agent users``.

Modules: :mod:`.app` (the application, login), :mod:`.pages`, :mod:`.compose`,
:mod:`.admin` (the pages), :mod:`.auth` (passwords, TOTP, sessions, CSRF), :mod:`.users`
(people, login attempts, the access log), :mod:`.forms` and :mod:`.display` (schemas to
forms and back, values to text), :mod:`.mailbox` (metadata for the lists), :mod:`.labels`
(the French wording), :mod:`.server` (uvicorn, TLS).
"""
