"""Readers of the other paper sources, each on a tiny fixture in its published layout."""
import gzip
import json

import pytest

from data.prepare.records import BadLines, DataError
from data.prepare import templates
from data.prepare.sources import anime, bookcrossing, food, goodreads, hotelrec, netflix, steam, wikirec


def test_steam_purchase_rows_only(tmp_path):
    p = tmp_path / "steam-200k.csv"
    p.write_text('151603712,"The Elder Scrolls V Skyrim",purchase,1.0,0\n'
                 '151603712,"The Elder Scrolls V Skyrim",play,273.0,0\n151603712,"Fallout 4",purchase,1.0,0\n')
    bad = BadLines()
    xs = list(steam.read(p, bad))
    assert [x.item.title for x in xs] == ["The Elder Scrolls V Skyrim", "Fallout 4"]
    assert xs[0].rating is None and bad.ignored == {"play_row": 1}


def test_anime_minus_one_is_no_rating(tmp_path):
    (tmp_path / "anime.csv").write_text('anime_id,name,genre,type,episodes,rating,members\n'
                                        '32281,Kimi no Na wa.,"Drama, Romance",Movie,1,9.37,200630\n'
                                        '5,Gintama&#039;,Comedy,TV,51,9.04,1\n')
    (tmp_path / "rating.csv").write_text("user_id,anime_id,rating\n1,32281,-1\n1,5,10\n")
    xs = list(anime.read(tmp_path, BadLines()))
    assert xs[0].rating is None and xs[1].rating == 10.0
    assert xs[0].item.genres == "Drama, Romance" and xs[1].item.title == "Gintama'"


def test_bookcrossing_semicolon_latin1(tmp_path):
    (tmp_path / "BX-Books.csv").write_bytes('"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication"\n'
                                            '"0195153448";"Classical Myth";"Mark P. O. Morford";"2002"\n'
                                            '"0002005018";"Clara Callan";"Richard Bruce Wright";"2001"\n'.encode("latin-1"))
    (tmp_path / "BX-Book-Ratings.csv").write_bytes('"User-ID";"ISBN";"Book-Rating"\n"276725";"0195153448";"0"\n'
                                                   '"276726";"0002005018";"5"\n'.encode("latin-1"))
    xs = list(bookcrossing.read(tmp_path, BadLines()))
    assert xs[0].rating is None and xs[1].rating == 5.0 and xs[1].item.author == "Richard Bruce Wright"


def test_food_reader_and_bad_date(tmp_path):
    (tmp_path / "RAW_recipes.csv").write_text("name,id,minutes\narriba baked winter squash,137739,55\n")
    (tmp_path / "RAW_interactions.csv").write_text("user_id,recipe_id,date,rating,review\n"
                                                   '38094,137739,2003-02-17,4,"Great with a salad,\ncooked"\n'
                                                   "1,137739,yesterday,4,x\n")
    with pytest.raises(DataError, match=r"RAW_interactions.csv:4: bad_time"):
        list(food.read(tmp_path, BadLines()))
    xs = list(food.read(tmp_path, BadLines(skip_bad=True)))
    assert len(xs) == 1 and xs[0].review == "Great with a salad, cooked" and xs[0].item.title.startswith("arriba")


def test_netflix_reader(tmp_path):
    (tmp_path / "movie_titles.csv").write_bytes("1,2003,Dinosaur Planet\n2,NULL,Isle of Man, The\n".encode("latin-1"))
    (tmp_path / "combined_data_1.txt").write_text("1:\n1488844,3,2005-09-06\n2:\n822109,5,2005-05-13\n")
    xs = list(netflix.read(tmp_path, BadLines()))
    assert [(x.user, x.item.title, x.rating) for x in xs] == [("1488844", "Dinosaur Planet", 3.0),
                                                              ("822109", "Isle of Man, The", 5.0)]


def test_hotelrec_title_and_city_from_url(tmp_path):
    p = tmp_path / "HotelRec.txt"
    p.write_text(json.dumps({"hotel_url": "Hotel_Review-g194775-d1121769-Reviews-Hotel_Baltic-Giulianova_Province_of_Teramo_Abruzzo.html",
                             "author": "ladypilot", "date": "2017-02-01T00:00:00", "rating": 1.0, "title": "Bad",
                             "text": "Noisy room.", "property_dict": {}}) + "\n")
    (x,) = hotelrec.read(p, BadLines())
    assert x.item.title == "Hotel Baltic" and x.item.city == "Giulianova Province of Teramo Abruzzo"
    assert x.review == "Noisy room." and x.rating == 1.0


def test_goodreads_reader(tmp_path):
    def gz(name, rows):
        with gzip.open(tmp_path / name, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name
    books = gz("books.json.gz", [{"book_id": "5", "title": "Dune", "authors": [{"author_id": "9", "role": ""}]}])
    authors = gz("authors.json.gz", [{"author_id": "9", "name": "Frank Herbert"}])
    genres = gz("genres.json.gz", [{"book_id": "5", "genres": {"fiction": 3, "sci-fi": 7}}])
    reviews = gz("reviews.json.gz", [{"user_id": "u", "book_id": "5", "rating": 5, "review_text": "Epic.",
                                      "date_added": "Fri Aug 25 13:55:02 -0700 2017"}])
    (x,) = goodreads.read(reviews, BadLines(), books=books, authors=authors, genres=genres)
    assert (x.item.title, x.item.author, x.item.genres, x.rating) == ("Dune", "Frank Herbert", "sci-fi, fiction", 5.0)


def wikirec_fixture(tmp_path, bad_row=""):
    items = tmp_path / "Items_content_of_Wikidata_14M.csv"
    items.write_text('item_id,label,description\nQ42,Douglas Adams,"English writer, humorist"\n'
                     'Q1,Universe,totality of space and all contents\nQ7,,no label\n')
    inter = tmp_path / "Wikidata_14M.csv"
    inter.write_text("user_id,item_id,frequence\n12,Q42,3\n12,Q1,1\n" + bad_row + "12,Q99,2\n5,Q7,1\n")
    return inter, items


def test_wikirec_reader_file_order_titles_descriptions(tmp_path):
    inter, items = wikirec_fixture(tmp_path)
    xs = list(wikirec.read(inter, items, BadLines()))
    assert [(x.user, x.item.id, x.seq) for x in xs] == [("12", "Q42", 0), ("12", "Q1", 1), ("12", "Q99", 2), ("5", "Q7", 3)]
    assert xs[0].item.title == "Douglas Adams" and xs[0].item.description == "English writer, humorist"
    assert xs[0].time is None and xs[0].rating is None  # no timestamps (file order), no rating task
    assert xs[2].item.title is None and xs[3].item.title is None  # not in the item file / no label: untitled
    d = templates.get_domain("wikirec")
    assert templates.pretrain_document(d, xs[:2]).endswith(
        "Title: Douglas Adams; Description: English writer, humorist\n"
        "Title: Universe; Description: totality of space and all contents")
    # the columns by header name, and swapped
    xs = list(wikirec.read(inter, items, BadLines(), title_column="description", description_column="label"))
    assert xs[0].item.title == "English writer, humorist" and xs[0].item.description == "Douglas Adams"
    with pytest.raises(DataError, match=r"Items_content_of_Wikidata_14M.csv:1: option title_column='name'.*"
                                        r"\['item_id', 'label', 'description'\]"):
        list(wikirec.read(inter, items, BadLines(), title_column="name"))
    with pytest.raises(DataError, match=r"option description_column=0"):
        list(wikirec.read(inter, items, BadLines(), description_column=0))


def test_wikirec_bad_row_stops_or_is_counted(tmp_path):
    inter, items = wikirec_fixture(tmp_path, bad_row="12,Q5\n")
    with pytest.raises(DataError, match=r"Wikidata_14M.csv:4: wrong_field_count"):
        list(wikirec.read(inter, items, BadLines()))
    bad = BadLines(skip_bad=True)
    assert len(list(wikirec.read(inter, items, bad))) == 4 and bad.counts == {"wrong_field_count": 1}
    (tmp_path / "x.csv").write_text("uid,item\n1,Q1\n")
    with pytest.raises(DataError, match=r"x.csv:1: unexpected header"):
        list(wikirec.read(tmp_path / "x.csv", items, BadLines()))
