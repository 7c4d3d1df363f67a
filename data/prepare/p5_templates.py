"""P5's prompt collection as data (Geng et al., RecSys 2022; github jeykigung/P5 `src/all_amazon_templates.py` and
`src/all_yelp_templates.py`; ../shared/spec/p5.md §1).

Every template keeps P5's id ("2-13"), its family, its `source` and `target` strings character for character
(`{}` slots filled positionally, as P5 does with str.format), and the names of the fields that fill them, in order
(P5's `source_argv` / `target_argv`). P5 calls the direct-recommendation family "traditional"; here it is
"direct" (`P5_FAMILY_KEY` maps back). The 7 zero-shot cold-start templates (Z-1..Z-7) need brand and price, which
no data here has; they are not included.

    from data.prepare import p5_templates as t
    t.get("2-13")                         # -> Template (an unknown id is a ValueError naming it)
    seen, unseen = t.split()             # P5's seen (trained) / held-out (zero-shot) ids
    t.get("1-6").fill(user_desc="user_7", item_id="12")  # the prompt

The held-out set is exactly the complement of P5's `train_task_list` (`src/pretrain.py`): 1-10, 2-13, 3-12, 4-4,
5-8 for Amazon; 1-10, 2-13, 3-10, 4-3, 5-8 for Yelp (10 explanation and 3 review templates there). Note that 4-4
predicts a star rating from a review: P5 holds out no summarisation template.
"""
import string
from dataclasses import dataclass

FAMILIES = ("rating", "sequential", "explanation", "review", "direct")
P5_FAMILY_KEY = {"rating": "rating", "sequential": "sequential", "explanation": "explanation", "review": "review",
                 "direct": "traditional"}
COLLECTIONS = ("amazon", "yelp")


@dataclass(frozen=True)
class Template:
    id: str
    family: str
    source: str  # P5's prompt, `{}` slots in the order of source_fields
    target: str  # P5's target, "{}" or "{} , {}" (rating , explanation: 3-7, 3-8)
    source_fields: tuple
    target_fields: tuple

    def fill(self, **values) -> str:
        """The prompt: `source` with the values of source_fields, in order (a missing field is a KeyError naming
        the template and the field)."""
        return self.source.format(*(_value(self, values, f) for f in self.source_fields))

    def fill_target(self, **values) -> str:
        return self.target.format(*(_value(self, values, f) for f in self.target_fields))


def _value(t: Template, values: dict, name: str):
    if name not in values:
        raise KeyError(f"template {t.id} needs the field {name!r} (it has {sorted(values)})")
    return values[name]


def _t(tid, source, source_fields, target_fields=None, target="{}"):
    family = FAMILIES[int(tid.split("-")[0]) - 1]
    return Template(tid, family, source, target, tuple(source_fields), tuple(target_fields or ()))


_R = ("star_rating",)
_YN = ("yes_no",)
_LD = ("like_dislike",)
_ITEM = ("item_id",)
_EXP = ("explanation",)
_GT = ("groundtruth_item_ids",)
_RE = ("star_rating", "explanation")

# --- Amazon (Beauty, Sports, Toys): 10 + 13 + 12 + 4 + 8 = 47 -----------------------------------------------
_AMAZON = [
    _t("1-1", "Which star rating will user_{} give item_{} ? ( 1 being lowest and 5 being highest )",
       ["user_id", "item_id"], _R),
    _t("1-2", "How will user_{} rate this product : {} ? ( 1 being lowest and 5 being highest )",
       ["user_id", "item_title"], _R),
    _t("1-3", "Will user_{} give item_{} a {}-star rating ? ( 1 being lowest and 5 being highest )",
       ["user_id", "item_id", "star_rating"], _YN),
    _t("1-4", "Does user_{} like or dislike item_{} ?", ["user_id", "item_id"], _LD),
    _t("1-5", "Predict the user_{} 's preference on item_{} ( {} ) \n -1 \n -2 \n -3 \n -4 \n -5",
       ["user_id", "item_id", "item_title"], _R),
    _t("1-6", "What star rating do you think {} will give item_{} ? ( 1 being lowest and 5 being highest )",
       ["user_desc", "item_id"], _R),
    _t("1-7", "How will {} rate this product : {} ? ( 1 being lowest and 5 being highest )",
       ["user_desc", "item_title"], _R),
    _t("1-8", "Will {} give a {}-star rating for {} ? ( 1 being lowest and 5 being highest )",
       ["user_desc", "star_rating", "item_title"], _YN),
    _t("1-9", "Does {} like or dislike {} ?", ["user_desc", "item_title"], _LD),
    _t("1-10", "Predict {} 's preference towards {} ( 1 being lowest and 5 being highest )",
       ["user_desc", "item_title"], _R),

    _t("2-1", "Given the following purchase history of user_{} : \n {} \n predict next possible item to be "
              "purchased by the user ?", ["user_id", "purchase_history"], _ITEM),
    _t("2-2", "I find the purchase history list of user_{} : \n {} \n I wonder what is the next item to recommend "
              "to the user . Can you help me decide ?", ["user_id", "purchase_history"], _ITEM),
    _t("2-3", "Here is the purchase history list of user_{} : \n {} \n try to recommend next item to the user",
       ["user_id", "purchase_history"], _ITEM),
    _t("2-4", "Given the following purchase history of {} : \n {} \n predict next possible item for the user",
       ["user_desc", "purchase_history"], _ITEM),
    _t("2-5", "Based on the purchase history of {} : \n {} \n Can you decide the next item likely to be purchased "
              "by the user ?", ["user_desc", "purchase_history"], _ITEM),
    _t("2-6", "Here is the purchase history of {} : \n {} \n What to recommend next for the user ?",
       ["user_desc", "purchase_history"], _ITEM),
    _t("2-7", "Here is the purchase history of user_{} : \n {} \n Select the next possible item likely to be "
              "purchased by the user from the following candidates : \n {}",
       ["user_id", "purchase_history", "candidates"], _ITEM),
    _t("2-8", "Given the following purchase history of {} : \n {} \n What to recommend next for the user? Select "
              "one from the following items : \n {}", ["user_desc", "purchase_history", "candidates"], _ITEM),
    _t("2-9", "Based on the purchase history of user_{} : \n {} \n Choose the next possible purchased item from "
              "the following candidates : \n {}", ["user_id", "purchase_history", "candidates"], _ITEM),
    _t("2-10", "I find the purchase history list of {} : \n {} \n I wonder which is the next item to recommend to "
               "the user . Try to select one from the following candidates : \n {}",
       ["user_desc", "purchase_history", "candidates"], _ITEM),
    _t("2-11", "user_{} has the following purchase history : \n {} \n does the user likely to buy {} next ?",
       ["user_id", "purchase_history", "item_id"], _YN),
    _t("2-12", "According to {} 's purchase history list : \n {} \n Predict whether the user will purchase {} "
               "next ?", ["user_desc", "purchase_history", "item_id"], _YN),
    _t("2-13", "According to the purchase history of {} : \n {} \n Can you recommend the next possible item to "
               "the user ?", ["user_desc", "purchase_history"], _ITEM),

    _t("3-1", "Generate an explanation for user_{} about this product : {}", ["user_id", "item_title"], _EXP),
    _t("3-2", "Given the following review headline \n {} \n can you help generate an explanation of user_{} for "
              "item_{} ?", ["review_headline", "user_id", "item_id"], _EXP),
    _t("3-3", "Help user_{} generate a {}-star explanation about this product : \n {}",
       ["user_id", "star_rating", "item_title"], _EXP),
    _t("3-4", "Generate an explanation for {} about this product : {}", ["user_desc", "item_title"], _EXP),
    _t("3-5", "Based on the following review headline : \n {} \n Generate {} 's purchase explanation about {}",
       ["review_headline", "user_desc", "item_title"], _EXP),
    _t("3-6", "Help {} generate a {}-star explanation for item_{}", ["user_desc", "star_rating", "item_id"], _EXP),
    _t("3-7", "Predict the star rating , then use {} as feature word to generate user_{} 's purchase explanation "
              "for item_{}", ["feature", "user_id", "item_id"], _RE, "{} , {}"),
    _t("3-8", "What score will {} rate item_{} ? Then give an explanation for the rating score . ( 1 being lowest "
              "and 5 being highest )", ["user_desc", "item_id"], _RE, "{} , {}"),
    _t("3-9", "Based on the feature word {} , generate an explanation for user_{} about this product : {}",
       ["feature", "user_id", "item_title"], _EXP),
    _t("3-10", "Given the word {} , can you help generate an explanation for {} about the product : \n {}",
       ["feature", "user_desc", "item_title"], _EXP),
    _t("3-11", "Using the word {} , write a {}-star explanation for user_{} about item_{}",
       ["feature", "star_rating", "user_id", "item_id"], _EXP),
    _t("3-12", "According to the feature word {} , generate a {}-star explanation for {} about item_{}",
       ["feature", "star_rating", "user_desc", "item_id"], _EXP),

    _t("4-1", "Write a short sentence to summarize the following product review from user_{} : \n {}",
       ["user_id", "review_body"], ("review_headline",)),
    _t("4-2", "Given the following review written by user_{} : \n {} \n Can you predict the associated star "
              "rating ? ( 1 being lowest and 5 being highest )", ["user_id", "review_body"], _R),
    _t("4-3", "Give a short sentence describing the following product review from {}: \n {}",
       ["user_desc", "review_body"], ("review_headline",)),
    _t("4-4", "According to the following review written by {} : \n {} \n Predict the associated star rating "
              "( 1 being lowest and 5 being highest )", ["user_desc", "review_body"], _R),

    _t("5-1", "Will user_{} likely to interact with item_{} ?", ["user_id", "item_id"], _YN),
    _t("5-2", "Shall we recommend item_{} to {} ?", ["item_id", "user_desc"], _YN),
    _t("5-3", "For {}, do you think it is good to recommend {} ?", ["user_desc", "item_title"], _YN),
    _t("5-4", "I would like to recommend some items for user_{} . Is the following item a good choice ? \n {}",
       ["user_id", "item_title"], _YN),
    _t("5-5", "Which item of the following to recommend for {} ? \n {}", ["user_desc", "candidates"], _GT),
    _t("5-6", "Choose the best item from the candidates to recommend for {} ? \n {}", ["user_desc", "candidates"],
       _GT),
    _t("5-7", "Pick the most suitable item from the following list and recommend to user_{} : \n {}",
       ["user_id", "candidates"], _GT),
    # P5's double space after "." is in the source string
    _t("5-8", "We want to make recommendation for user_{} .  Select the best item from these candidates : \n {}",
       ["user_id", "candidates"], _GT),
]

# --- Yelp: 10 + 13 + 10 + 3 + 8 = 44; "business"/"visit" wording, U+2019 in 1-5 and 1-10 as in P5's file -----------
_VH = "visit_history"
_YELP = [
    _AMAZON[0],
    _t("1-2", "How will user_{} rate this business : {} ? ( 1 being lowest and 5 being highest )",
       ["user_id", "item_title"], _R),
    _AMAZON[2], _AMAZON[3],
    _t("1-5", "Predict the user_{}\u2019s preference on item_{} ( {} ) \n -1 \n -2 \n -3 \n -4 \n -5",
       ["user_id", "item_id", "item_title"], _R),
    _AMAZON[5],
    _t("1-7", "How will {} rate this business : {} ? ( 1 being lowest and 5 being highest )",
       ["user_desc", "item_title"], _R),
    _AMAZON[7], _AMAZON[8],
    _t("1-10", "Predict {} \u2019s preference towards {} ( 1 being lowest and 5 being highest )",
       ["user_desc", "item_title"], _R),

    _t("2-1", "Given the following visit history of user_{} : \n {} \n predict next possible business to be "
              "visited by the user ?", ["user_id", _VH], _ITEM),
    _t("2-2", "I find the visit history list of user_{} : \n {} \n I wonder what is the next item to recommend to "
              "the user . Can you help me decide ?", ["user_id", _VH], _ITEM),
    _t("2-3", "Here is the visit history list of user_{} : \n {} \n try to recommend next item to the user",
       ["user_id", _VH], _ITEM),
    _t("2-4", "Given the following visit history of {} : \n {} \n predict next possible business for the user",
       ["user_desc", _VH], _ITEM),
    _t("2-5", "Based on the visit history of {} : \n {} \n Can you decide the next business likely to be visited "
              "by the user ?", ["user_desc", _VH], _ITEM),
    _t("2-6", "Here is the visit history of {} : \n {} \n What to recommend next for the user ?",
       ["user_desc", _VH], _ITEM),
    _t("2-7", "Here is the visit history of user_{} : \n {} \n Select the next possible business likely to be "
              "visited by the user from the following candidates : \n {}", ["user_id", _VH, "candidates"], _ITEM),
    _t("2-8", "Given the following visit history of {} : \n {} \n What to recommend next for the user? Select one "
              "from the following items : \n {}", ["user_desc", _VH, "candidates"], _ITEM),
    _t("2-9", "Based on the visit history of user_{} : \n {} \n Choose the next possible visited business from the "
              "following candidates : \n {}", ["user_id", _VH, "candidates"], _ITEM),
    _t("2-10", "I find the visit history list of {} : \n {} \n I wonder which is the next item to recommend to the "
               "user . Try to select one from the following candidates : \n {}",
       ["user_desc", _VH, "candidates"], _ITEM),
    _t("2-11", "user_{} has the following visit history : \n {} \n does the user likely to visit {} next ?",
       ["user_id", _VH, "item_id"], _YN),
    _t("2-12", "According to {} 's visit history list : \n {} \n Predict whether the user will visit {} next ?",
       ["user_desc", _VH, "item_id"], _YN),
    _t("2-13", "According to the visit history of {} : \n {} \n Can you recommend the next possible business to "
               "the user ?", ["user_desc", _VH], _ITEM),

    _t("3-1", "Generate an explanation for user_{} about this business : {}", ["user_id", "item_title"], _EXP),
    _t("3-2", "Help user_{} generate a {}-star explanation about this business : \n {}",
       ["user_id", "star_rating", "item_title"], _EXP),
    _t("3-3", "Generate an explanation for {} about this business : {}", ["user_desc", "item_title"], _EXP),
    _t("3-4", "Help {} generate a {}-star explanation for item_{}", ["user_desc", "star_rating", "item_id"], _EXP),
    _t("3-5", "Predict the star rating , then use {} as feature word to generate user_{} 's visit explanation for "
              "item_{}", ["feature", "user_id", "item_id"], _RE, "{} , {}"),
    _t("3-6", "What score will {} rate item_{} ? Then give an explanation for the rating score . ( 1 being lowest "
              "and 5 being highest )", ["user_desc", "item_id"], _RE, "{} , {}"),
    _t("3-7", "Based on the feature word {} , generate an explanation for user_{} about this business : {}",
       ["feature", "user_id", "item_title"], _EXP),
    _t("3-8", "Given the word {} , can you help generate an explanation for {} about the business : \n {}",
       ["feature", "user_desc", "item_title"], _EXP),
    _t("3-9", "Using the word {} , write a {}-star explanation for user_{} about item_{}",
       ["feature", "star_rating", "user_id", "item_id"], _EXP),
    _t("3-10", "According to the feature word {} , generate a {}-star explanation for {} about item_{}",
       ["feature", "star_rating", "user_desc", "item_id"], _EXP),

    _t("4-1", "Predict the associated rating score of the review written by user_{} ( 1 being lowest and 5 being "
              "highest ) : \n {}", ["user_id", "review_body"], _R),
    _t("4-2", "Given the following review written by user_{} : \n {} \n Can you predict the associated star "
              "rating ? ( 1 being lowest and 5 being highest )", ["user_id", "review_body"], _R),
    _t("4-3", "According to the following review written by {} : \n {} \n Predict the associated star rating "
              "( 1 being lowest and 5 being highest )", ["user_desc", "review_body"], _R),
    *_AMAZON[39:47],  # the direct family is worded the same
]

TEMPLATES = {"amazon": {t.id: t for t in _AMAZON}, "yelp": {t.id: t for t in _YELP}}

# P5's held-out ("unseen", zero-shot) templates: the complement of train_task_list in src/pretrain.py
HELD_OUT = {"amazon": ("1-10", "2-13", "3-12", "4-4", "5-8"), "yelp": ("1-10", "2-13", "3-10", "4-3", "5-8")}

# The templates P5 evaluates (P5 paper §5.3; ../shared/spec/p5.md §1.1), seen and unseen (Amazon ids)
EVALUATED_SEEN = ("1-6", "2-3", "3-3", "3-9", "4-1", "4-2", "5-1", "5-4", "5-5")
EVALUATED_UNSEEN = ("1-10", "2-13", "3-12", "4-4", "5-8")

# P5's training groups (`train_sample_numbers` in src/pretrain.py, `compute_datum_info` in src/pretrain_data.py):
# each group is drawn `multiplier` times per epoch (per user for sequential/direct, per review for the others),
# and each draw picks one of the group's *seen* templates uniformly.
TRAIN_GROUPS = {
    "rating": [tuple(f"1-{i}" for i in range(1, 11))],
    "sequential": [tuple(f"2-{i}" for i in (1, 2, 3, 4, 5, 6, 13)), tuple(f"2-{i}" for i in range(7, 11)),
                   ("2-11", "2-12")],
    "explanation": [tuple(f"3-{i}" for i in range(1, 13))],
    "review": [tuple(f"4-{i}" for i in range(1, 5))],
    "direct": [tuple(f"5-{i}" for i in range(1, 5)), tuple(f"5-{i}" for i in range(5, 9))],
}
P5_MULTIPLIERS = {"rating": [1], "sequential": [5, 5, 10], "explanation": [1], "review": [1], "direct": [10, 5]}


def templates(collection: str = "amazon") -> dict:
    if collection not in TEMPLATES:
        raise ValueError(f"unknown template collection {collection!r}: one of {list(TEMPLATES)}")
    return TEMPLATES[collection]


def get(template_id: str, collection: str = "amazon") -> Template:
    coll = templates(collection)
    if template_id not in coll:
        raise ValueError(f"no P5 template {template_id!r} in the {collection} collection (ids: "
                         f"{', '.join(coll)})")
    return coll[template_id]


def split(collection: str = "amazon", held_out=None) -> tuple[list, list]:
    """(seen ids, held-out ids) in P5's order; `held_out` replaces P5's held-out set (every id must exist)."""
    coll = templates(collection)
    held = list(HELD_OUT[collection] if held_out is None else held_out)
    for tid in held:
        get(tid, collection)
    return [t for t in coll if t not in held], [t for t in coll if t in held]


def group_templates(family: str, group: int, seen: list, collection: str = "amazon") -> list:
    """The seen templates of one training group (P5's ids of the group that exist in `collection`)."""
    coll = templates(collection)
    return [t for t in TRAIN_GROUPS[family][group] if t in coll and t in seen]


def slot_names(source: str) -> int:
    """How many `{}` slots a source string has (a check that fields and slots agree)."""
    return sum(1 for _, name, _, _ in string.Formatter().parse(source) if name is not None)
