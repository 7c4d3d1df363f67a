"""P5's templates as data (data/prepare/p5_templates.py) against a separate copy of P5's strings.

The copy below was written from jeykigung/P5 `src/all_amazon_templates.py` (each `template['source']`) and
`src/pretrain.py` (`train_task_list`, non-Yelp and Yelp branches), independently of the module's table, so that an
edit to either shows up here."""
import pytest

from data.prepare import p5_templates as t

P5_AMAZON_SOURCES = {
    "1-1": "Which star rating will user_{} give item_{} ? ( 1 being lowest and 5 being highest )",
    "1-2": "How will user_{} rate this product : {} ? ( 1 being lowest and 5 being highest )",
    "1-3": "Will user_{} give item_{} a {}-star rating ? ( 1 being lowest and 5 being highest )",
    "1-4": "Does user_{} like or dislike item_{} ?",
    "1-5": "Predict the user_{} 's preference on item_{} ( {} ) \n -1 \n -2 \n -3 \n -4 \n -5",
    "1-6": "What star rating do you think {} will give item_{} ? ( 1 being lowest and 5 being highest )",
    "1-7": "How will {} rate this product : {} ? ( 1 being lowest and 5 being highest )",
    "1-8": "Will {} give a {}-star rating for {} ? ( 1 being lowest and 5 being highest )",
    "1-9": "Does {} like or dislike {} ?",
    "1-10": "Predict {} 's preference towards {} ( 1 being lowest and 5 being highest )",
    "2-1": "Given the following purchase history of user_{} : \n {} \n predict next possible item to be purchased by the user ?",
    "2-2": "I find the purchase history list of user_{} : \n {} \n I wonder what is the next item to recommend to the user . Can you help me decide ?",
    "2-3": "Here is the purchase history list of user_{} : \n {} \n try to recommend next item to the user",
    "2-4": "Given the following purchase history of {} : \n {} \n predict next possible item for the user",
    "2-5": "Based on the purchase history of {} : \n {} \n Can you decide the next item likely to be purchased by the user ?",
    "2-6": "Here is the purchase history of {} : \n {} \n What to recommend next for the user ?",
    "2-7": "Here is the purchase history of user_{} : \n {} \n Select the next possible item likely to be purchased by the user from the following candidates : \n {}",
    "2-8": "Given the following purchase history of {} : \n {} \n What to recommend next for the user? Select one from the following items : \n {}",
    "2-9": "Based on the purchase history of user_{} : \n {} \n Choose the next possible purchased item from the following candidates : \n {}",
    "2-10": "I find the purchase history list of {} : \n {} \n I wonder which is the next item to recommend to the user . Try to select one from the following candidates : \n {}",
    "2-11": "user_{} has the following purchase history : \n {} \n does the user likely to buy {} next ?",
    "2-12": "According to {} 's purchase history list : \n {} \n Predict whether the user will purchase {} next ?",
    "2-13": "According to the purchase history of {} : \n {} \n Can you recommend the next possible item to the user ?",
    "3-1": "Generate an explanation for user_{} about this product : {}",
    "3-2": "Given the following review headline \n {} \n can you help generate an explanation of user_{} for item_{} ?",
    "3-3": "Help user_{} generate a {}-star explanation about this product : \n {}",
    "3-4": "Generate an explanation for {} about this product : {}",
    "3-5": "Based on the following review headline : \n {} \n Generate {} 's purchase explanation about {}",
    "3-6": "Help {} generate a {}-star explanation for item_{}",
    "3-7": "Predict the star rating , then use {} as feature word to generate user_{} 's purchase explanation for item_{}",
    "3-8": "What score will {} rate item_{} ? Then give an explanation for the rating score . ( 1 being lowest and 5 being highest )",
    "3-9": "Based on the feature word {} , generate an explanation for user_{} about this product : {}",
    "3-10": "Given the word {} , can you help generate an explanation for {} about the product : \n {}",
    "3-11": "Using the word {} , write a {}-star explanation for user_{} about item_{}",
    "3-12": "According to the feature word {} , generate a {}-star explanation for {} about item_{}",
    "4-1": "Write a short sentence to summarize the following product review from user_{} : \n {}",
    "4-2": "Given the following review written by user_{} : \n {} \n Can you predict the associated star rating ? ( 1 being lowest and 5 being highest )",
    "4-3": "Give a short sentence describing the following product review from {}: \n {}",
    "4-4": "According to the following review written by {} : \n {} \n Predict the associated star rating ( 1 being lowest and 5 being highest )",
    "5-1": "Will user_{} likely to interact with item_{} ?",
    "5-2": "Shall we recommend item_{} to {} ?",
    "5-3": "For {}, do you think it is good to recommend {} ?",
    "5-4": "I would like to recommend some items for user_{} . Is the following item a good choice ? \n {}",
    "5-5": "Which item of the following to recommend for {} ? \n {}",
    "5-6": "Choose the best item from the candidates to recommend for {} ? \n {}",
    "5-7": "Pick the most suitable item from the following list and recommend to user_{} : \n {}",
    "5-8": "We want to make recommendation for user_{} .  Select the best item from these candidates : \n {}",
}
P5_TWO_TARGETS = {"3-7", "3-8"}  # target "{} , {}"

# src/pretrain.py train_task_list (keys are P5's; "traditional" is the direct family)
P5_TRAIN_TASK_LIST = {
    "amazon": {"rating": [f"1-{i}" for i in range(1, 10)], "sequential": [f"2-{i}" for i in range(1, 13)],
               "explanation": [f"3-{i}" for i in range(1, 12)], "review": ["4-1", "4-2", "4-3"],
               "traditional": [f"5-{i}" for i in range(1, 8)]},
    "yelp": {"rating": [f"1-{i}" for i in range(1, 10)], "sequential": [f"2-{i}" for i in range(1, 13)],
             "explanation": [f"3-{i}" for i in range(1, 10)], "review": ["4-1", "4-2"],
             "traditional": [f"5-{i}" for i in range(1, 8)]},
}


def test_every_amazon_source_equals_p5_char_for_char():
    ours = t.templates("amazon")
    assert len(ours) == 47 and list(ours) == list(P5_AMAZON_SOURCES)
    for tid, source in P5_AMAZON_SOURCES.items():
        assert ours[tid].source == source, tid
        assert ours[tid].target == ("{} , {}" if tid in P5_TWO_TARGETS else "{}"), tid
        assert ours[tid].family == t.FAMILIES[int(tid[0]) - 1]


def test_fields_match_slots_and_fill_in_order():
    for coll in t.COLLECTIONS:
        for tid, tpl in t.templates(coll).items():
            assert t.slot_names(tpl.source) == len(tpl.source_fields), (coll, tid)
            assert t.slot_names(tpl.target) == len(tpl.target_fields), (coll, tid)
    tpl = t.get("3-12")
    assert tpl.source_fields == ("feature", "star_rating", "user_desc", "item_id")
    assert tpl.fill(feature="color", star_rating=4, user_desc="Ann", item_id="17") == \
        "According to the feature word color , generate a 4-star explanation for Ann about item_17"
    assert t.get("3-7").fill_target(star_rating="4.1", explanation="nice") == "4.1 , nice"
    with pytest.raises(KeyError, match="3-12.*feature"):
        tpl.fill(star_rating=4, user_desc="Ann", item_id="17")


@pytest.mark.parametrize("coll", t.COLLECTIONS)
def test_seen_unseen_split_is_p5s_train_task_list_complement(coll):
    trained = {tid for ids in P5_TRAIN_TASK_LIST[coll].values() for tid in ids}
    seen, unseen = t.split(coll)
    assert set(seen) == trained
    assert set(unseen) == set(t.templates(coll)) - trained
    assert set(unseen) == set(t.HELD_OUT[coll])


def test_yelp_collection_and_configurable_held_out_set():
    yelp = t.templates("yelp")
    assert len(yelp) == 44
    assert [sum(1 for x in yelp.values() if x.family == f) for f in t.FAMILIES] == [10, 13, 10, 3, 8]
    assert "\u2019" in yelp["1-10"].source and "visit history" in yelp["2-13"].source
    assert yelp["4-1"].target_fields == ("star_rating",)  # Yelp's 4-1 predicts a rating, Amazon's summarises
    seen, unseen = t.split("amazon", held_out=["4-3"])
    assert unseen == ["4-3"] and "4-4" in seen


def test_unknown_template_id_is_named():
    with pytest.raises(ValueError, match="no P5 template '2-14'"):
        t.get("2-14")
    with pytest.raises(ValueError, match="'9-1'"):
        t.split("amazon", held_out=["9-1"])
    with pytest.raises(ValueError, match="3-12"):
        t.get("3-12", "yelp")  # Yelp has 10 explanation templates
