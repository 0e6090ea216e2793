"""Domain names on the cache-miss path, without dnspython's per-name overhead.

dnspython checks every label of every C{Name} it makes and makes a new one for each
C{canonicalize()}; on the resolving path the same few names come by again and again
in forms already checked.  These helpers skip only that repeated work: what they return
is equal (and hashes equal) to what dnspython would return.
"""

from __future__ import annotations

import dns.name

__all__ = ["canonical", "checked_name", "same_name"]


_Name = dns.name.Name
_join = b"".join
_new_name = _Name.__new__
# dnspython names are immutable (their own __setattr__ refuses): the slot's descriptor
# sets the labels directly, as object.__setattr__ would after looking it up each time
_set_labels = next(
    vars(k)["labels"] for k in _Name.__mro__ if "labels" in vars(k)
).__set__


def checked_name(labels: tuple[bytes, ...]) -> dns.name.Name:
    """The absolute name of C{labels} (the root label included), which the caller has
    checked as dnspython's constructor checks them: labels of 1 to 63 octets but the
    last, which is empty, and 255 octets in all."""
    name = _new_name(_Name)
    _set_labels(name, labels)
    return name


def canonical(name: dns.name.Name) -> dns.name.Name:
    """C{name.canonicalize()}, or C{name} itself when it is lowercase already (names
    are immutable, so the same object serves)."""
    joined = _join(name.labels)  # (one lower() for the whole name, not one per label)
    if joined == joined.lower():
        return name
    return name.canonicalize()


def same_name(a: dns.name.Name, b: dns.name.Name) -> bool:
    """C{a == b} (case-insensitive, as dnspython compares), by a tuple compare of their
    labels when the case matches, as it does for names that came lowercase."""
    labels, other = a.labels, b.labels
    if labels == other:
        return True
    if len(labels) != len(other):
        return False
    return all(x.lower() == y.lower() for x, y in zip(labels, other, strict=True))
