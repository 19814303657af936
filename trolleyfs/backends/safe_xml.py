"""XML answers (MINT, RAD-69) parsed with defusedxml: a DTD, an entity or an external reference
is refused, so a hostile answer can neither blow up memory nor make the daemon read files."""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException

from trolleyfs.errors import PacsProtocolError


def parse_xml(body: bytes, where: str) -> Element:
    """The root element of ``body``; PacsProtocolError (naming ``where``) for anything else."""
    try:
        return SafeElementTree.fromstring(body)
    except DefusedXmlException as exc:
        raise PacsProtocolError(f"{where}: refused XML with {type(exc).__name__} (DTD or entities)") from exc
    except (ParseError, LookupError) as exc:  # LookupError: an encoding Python does not know
        raise PacsProtocolError(f"{where}: answer is not XML: {exc}") from exc
