"""`sd web`: the template web form ("hide descriptions, fill up missing fields").

`forms` (pure but for reading templates): a form per site template, the user's values as a
small `.sf` that includes and extends the template, checked by the same resolver and site
policy as the job hooks. `access`: who the user is (localhost, HTTP basic against scrypt
hashes, or a trusted proxy's header), CSRF tokens, the names the server answers to (Host and
Origin), and which pools each user owns; `throttle`: failed logins cost the guesser time.
`app`: the Starlette routes and pages. Needs the `web` extra (Starlette, uvicorn, Jinja2).

Layer: face.
May import: errors, lang, vm, placement, config, hypervisor (the connection cache), deploy,
the standard library, starlette, jinja2.
"""
