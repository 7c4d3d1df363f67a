"""Each reader on a tiny fixture in its published layout, and bad input (file and line named / counted)."""
import gzip
import json

import pytest

from data.prepare.records import BadLines, DataError
from data.prepare.sources import amazon, movielens, p5, yelp


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_p5_reader(tmp_path):
    write(tmp_path / "sequential_data.txt", "1 1 2 3\n2 2 3\n")
    write(tmp_path / "items.jsonl", "\n".join(json.dumps(r) for r in [
        {"item_id": 1, "asin": "A", "title": "Lip  gloss"}, {"item_id": 2, "asin": "B", "title": ""},
        {"item_id": 3, "asin": "C", "title": "Soap"}]) + "\n")
    xs = list(p5.read(tmp_path, BadLines()))
    assert [(x.user, x.item.id) for x in xs] == [("1", "1"), ("1", "2"), ("1", "3"), ("2", "2"), ("2", "3")]
    assert xs[0].item.title == "Lip gloss" and xs[1].item.title is None  # whitespace folded; '' = no title
    assert [x.seq for x in xs] == [0, 1, 2, 3, 4] and xs[0].time is None


def test_p5_raw_ids_from_items_and_datamaps(tmp_path):
    """Raw ids: the ASIN from items.jsonl (or P5's item2id), the reviewerID from P5's datamaps.json user2id."""
    write(tmp_path / "sequential_data.txt", "1 1 2\n2 2 1\n")
    write(tmp_path / "items.jsonl", "\n".join(json.dumps(r) for r in [
        {"item_id": 1, "asin": "B0001", "title": "A"}, {"item_id": 2, "title": "B"}]) + "\n")
    xs = list(p5.read(tmp_path, BadLines()))
    assert [(x.raw_user, x.item.raw_id) for x in xs] == [(None, "B0001"), (None, None), (None, None), (None, "B0001")]
    write(tmp_path / "datamaps.json", json.dumps({"user2id": {"AX1": "1", "AX2": "2"},
                                                  "item2id": {"B0001": "1", "B0002": "2"}}))
    bad = BadLines(skip_bad=True)
    catalog = p5.read_catalog(tmp_path, bad, datamaps="datamaps.json")
    xs = list(p5.read(tmp_path, bad, datamaps="datamaps.json", catalog=catalog))
    assert [(x.user, x.raw_user, x.item.id, x.item.raw_id) for x in xs] == [
        ("1", "AX1", "1", "B0001"), ("1", "AX1", "2", "B0002"), ("2", "AX2", "2", "B0002"), ("2", "AX2", "1", "B0001")]
    write(tmp_path / "broken.json", "{")
    with pytest.raises(DataError, match="broken.json: not JSON"):
        list(p5.read(tmp_path, BadLines(), datamaps="broken.json"))
    write(tmp_path / "broken.json", json.dumps({"id2user": {}}))
    with pytest.raises(DataError, match="broken.json: no 'user2id' map"):
        list(p5.read(tmp_path, BadLines(), datamaps="broken.json"))


def test_p5_unknown_item_names_file_and_line(tmp_path):
    write(tmp_path / "sequential_data.txt", "1 1\n2 9\n")
    write(tmp_path / "items.jsonl", json.dumps({"item_id": 1, "title": "A"}) + "\n")
    with pytest.raises(DataError, match=r"sequential_data.txt:2: unknown_item"):
        list(p5.read(tmp_path, BadLines()))


def test_movielens_100k_layout(tmp_path):
    write(tmp_path / "u.data", "1\t10\t4\t881250949\n1\t11\t3\t881250950\n")
    flags = ["0"] * 19
    f1, f2 = flags.copy(), flags.copy()
    f1[3] = f1[5] = "1"
    write(tmp_path / "u.item", "10|Caf\xe9 Society (1995)|01-Jan-1995||http://x|" + "|".join(f1) + "\n"
          + "11|Heat (1995)|01-Jan-1995||http://y|" + "|".join(f2) + "\n", encoding="latin-1")
    xs = list(movielens.read(tmp_path, BadLines()))
    assert xs[0].item.title == "Café Society (1995)" and xs[0].item.genres == "Animation, Comedy"
    assert xs[1].item.genres is None  # no genre flag -> field left out
    assert (xs[0].user, xs[0].rating, xs[0].time) == ("1", 4.0, 881250949.0)


def test_movielens_csv_layout(tmp_path):
    write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"Toy Story, The (1995)",Animation|Comedy\n'
                                   '2,Nothing (2000),(no genres listed)\n')
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n7,1,3.5,100\n7,2,5.0,90\n")
    xs = list(movielens.read(tmp_path, BadLines()))
    assert xs[0].item.title == "Toy Story, The (1995)" and xs[0].item.genres == "Animation, Comedy"
    assert xs[1].item.genres is None and xs[0].rating == 3.5


def test_movielens_recbole_layout(tmp_path):
    write(tmp_path / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "1\tToy Story\t1995\tAnimation Children's Comedy\n267\tunkonwn\tunkonwn\tunknown\n")
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "196\t1\t3\t881250949\n196\t267\t4\t881250950\n")
    xs = list(movielens.read(tmp_path, BadLines()))
    assert [(x.user, x.item.id, x.rating, x.time) for x in xs] == [("196", "1", 3.0, 881250949.0),
                                                                 ("196", "267", 4.0, 881250950.0)]
    assert xs[0].item.title == "Toy Story (1995)" and xs[0].item.genres == "Animation, Children's, Comedy"
    assert xs[1].item.title == "unknown" and xs[1].item.genres is None  # as u.item has item 267


def test_movielens_non_numeric_rating(tmp_path):
    write(tmp_path / "u.data", "1\t10\t4\t5\n1\t10\tfour\t6\n")
    write(tmp_path / "u.item", "10|A|d||u|" + "|".join(["0"] * 19) + "\n")
    with pytest.raises(DataError, match=r"u.data:2: bad_rating"):
        list(movielens.read(tmp_path, BadLines()))
    bad = BadLines(skip_bad=True)
    assert len(list(movielens.read(tmp_path, bad))) == 1 and bad.counts == {"bad_rating": 1}


def test_amazon_2014_python_literal_meta_gz(tmp_path):
    meta = tmp_path / "meta_Beauty.json.gz"
    with gzip.open(meta, "wt") as f:
        f.write("{'asin': 'A1', 'title': 'Rose &amp; Oud', 'brand': 'Kiehl\\'s', 'categories': [['Beauty']]}\n")
        f.write("{'asin': 'A2', 'categories': [['Beauty']]}\n")  # no title
    reviews = tmp_path / "reviews_Beauty_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        for r in [{"reviewerID": "U", "asin": "A1", "overall": 5.0, "reviewText": "love\nit", "unixReviewTime": 2},
                  {"reviewerID": "U", "asin": "A2", "overall": 1.0, "unixReviewTime": 1}]:
            f.write(json.dumps(r) + "\n")
    xs = list(amazon.read(reviews, BadLines(), meta=meta))
    assert xs[0].item.title == "Rose & Oud" and xs[0].item.brand == "Kiehl's" and xs[0].review == "love it"
    assert xs[1].item.title is None and xs[1].review is None and xs[1].time == 1.0


def test_amazon_2018_json_lines_and_bad_lines(tmp_path):
    meta = write(tmp_path / "meta_All_Beauty.json", json.dumps({"asin": "B", "title": "Gel", "brand": "Axe"}) + "\n")
    reviews = write(tmp_path / "All_Beauty.json",
                    json.dumps({"reviewerID": "U", "asin": "B", "overall": 4.0, "unixReviewTime": 3}) + "\n"
                    + '{"reviewerID": "U", "asin": \n'  # broken JSON
                    + json.dumps({"reviewerID": "U", "asin": "B", "overall": "x", "unixReviewTime": 3}) + "\n")
    with pytest.raises(DataError, match=r"All_Beauty.json:2: broken_json"):
        list(amazon.read(reviews, BadLines(), meta=meta))
    bad = BadLines(skip_bad=True)
    xs = list(amazon.read(reviews, bad, meta=meta))
    assert len(xs) == 1 and xs[0].item.brand == "Axe"
    assert bad.counts == {"broken_json": 1, "bad_rating": 1}


def test_bad_encoding_is_reported_by_line(tmp_path):
    reviews = tmp_path / "r.json"
    reviews.write_bytes(json.dumps({"reviewerID": "U", "asin": "B", "overall": 4.0, "unixReviewTime": 3}).encode()
                        + b"\n{\"reviewerID\": \"\xff\xfe\"}\n")
    with pytest.raises(DataError, match=r"r.json:2: bad_encoding"):
        list(amazon.read(reviews, BadLines()))


def test_yelp_reader_with_p5_date_window(tmp_path):
    biz = write(tmp_path / "business.json", json.dumps({"business_id": "b1", "name": "Cafe", "city": "Reno"}) + "\n")
    rows = [("u", "2019-01-01 00:00:00", 5), ("u", "2019-12-31 00:00:00", 4), ("u", "2019-12-31 10:00:00", 3),
            ("u", "2018-12-31 23:59:59", 2)]
    reviews = write(tmp_path / "review.json", "".join(
        json.dumps({"user_id": u, "business_id": "b1", "stars": s, "text": "ok", "date": d}) + "\n" for u, d, s in rows))
    bad = BadLines()
    xs = list(yelp.read(reviews, bad, business=biz, date_min="2019-01-01 00:00:00", date_max="2019-12-31 00:00:00"))
    assert [x.rating for x in xs] == [5.0, 4.0]  # later on Dec 31 is out (string comparison, as P5)
    assert bad.ignored == {"outside_date_range": 2}
    assert xs[0].item.title == "Cafe" and xs[0].item.city == "Reno"


def test_real_p5_beauty_reader(shared_data):
    bad = BadLines()
    xs = list(p5.read(shared_data / "amazon-beauty-p5", bad))
    assert len(xs) == 198_502 and len({x.user for x in xs}) == 22_363 and len({x.item.id for x in xs}) == 12_101
    assert bad.total == 0


def test_real_movielens_100k_reader(shared_data):
    xs = list(movielens.read(shared_data / "movielens-100k", BadLines()))
    assert len(xs) == 100_000 and len({x.user for x in xs}) == 943 and len({x.item.id for x in xs}) == 1682
    toy = next(x.item for x in xs if x.item.id == "1")
    assert toy.title == "Toy Story (1995)" and toy.genres == "Animation, Children's, Comedy"


def test_real_recbole_copy_equals_grouplens_ml100k(shared_data, tmp_path):
    """The README's fallback source (the recbole wheel from PyPI) gives u.data's interactions exactly."""
    from data.prepare import fetch_movielens
    try:
        fetch_movielens.fetch(tmp_path)
    except Exception as e:  # noqa: BLE001 - no PyPI from this machine
        pytest.skip(f"could not download {fetch_movielens.WHEEL}: {e}")
    ours = list(movielens.read(tmp_path, BadLines()))
    grouplens = list(movielens.read(shared_data / "movielens-100k", BadLines()))
    assert [(x.user, x.item.id, x.rating, x.time) for x in ours] == \
        [(x.user, x.item.id, x.rating, x.time) for x in grouplens]
    a, b = ({x.item.id: x.item for x in xs} for xs in (ours, grouplens))
    assert all(a[i].genres == b[i].genres for i in b)
    assert sum(a[i].title != b[i].title for i in b) == 10  # accents RecBole kept and u.item dropped
