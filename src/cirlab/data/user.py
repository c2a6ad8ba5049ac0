"""Simulated users, one per data set family, each living with its data set; multi-turn search (``eval.multiturn``)
only runs sessions with them.

A simulated user holds a hidden target image and reads the data set's image records. It has a ``name``; the edit
kinds it says as a search by words alone (``text_only``); ``key(image)``, what it sees of an image (two images with
the same key are the same to it); ``editable(a, b)``, whether the data set's own edits lead from one to the other;
``distance(a, b)``, how far apart they are; ``steps(a, b)``, the edits it says between them; ``edit(current,
target, rng)``, the text of one edit towards the target and its kind; and ``attributes(current, target, kind)``, that
edit as a triplet's attributes (for the paraphrase bank, when it words its edits as people do). A new data set's user
is a class in its data set's module and one registration below.
"""

from __future__ import annotations

from cirlab.data.css import CssUser
from cirlab.data.emojiedit import EmojiUser
from cirlab.errors import CirlabError
from cirlab.registry import Registry

simulated_users: Registry[type] = Registry("simulated user")
simulated_users.register("emojiedit")(EmojiUser)
simulated_users.register("css")(CssUser)


def family(name: str) -> str:
    """A data set's family from its name: ``css``, ``css-large`` -> ``css``; ``emojiedit-noto`` -> ``emojiedit``."""
    return "css" if name.startswith("css") else name.split("-")[0]


def simulated_user(dataset):
    """The simulated user of a data set (EmojiEdit, CSS-like), which reads its image records."""
    if family(dataset.name) not in simulated_users:
        raise CirlabError(f"no simulated user knows the images of data set {dataset.name!r}: multi-turn search runs "
                          f"on {', '.join(simulated_users.names())} data sets, whose image records carry their "
                          "attributes")
    return simulated_users.get(family(dataset.name))(dataset.by_id)
