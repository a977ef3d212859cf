"""A job's or a pool's VM as data: the typed `VMSpec` read from a resolved `VM` component
(`spec`, with the value reader `values`), its libvirt domain XML as an ElementTree object model
(`domain_xml`), and the site's policy on what a job's VM may be (`site_policy`: it compares a
job's resolved `VMSpec` with its template's, so it lives with the spec it reads).

Layer: pure core (data in, data out; no libvirt, no files but the ones a caller names).
May import: errors, lang, the standard library.
"""
