"""The site's configuration and where sd-batch keeps things: the site TOML and its folders
(`site`, through pyxdg), and the site's VM templates found by name (`templates`).

Layer: edge (reads files under /etc and the XDG folders).
May import: errors, lang, vm (site policy), placement (placement rules), the standard library.
"""
