"""Templates of App. B against the exact text of ../shared/spec/recgpt.md §7, character for character."""
import pytest

from data.prepare import templates
from data.prepare.records import Interaction, Item


def x(title, rating=None, review=None, **fields):
    return Interaction("u", Item(title, title=title, **fields), rating=rating, review=review)


def test_amazon_pretrain_document_exact():
    d = templates.get_domain("amazon")
    doc = templates.pretrain_document(d, [x("Lipstick", 5.0, "Great color", brand="Revlon"),
                                          x("Soap", 3.0, "ok", brand="Dove")])
    assert doc == ("Given the interaction history of a user with products as follows:\n\n"
                   "Title: Lipstick; Brand: Revlon; Review: Great color; Rating: 5.0/5.0\n"
                   "Title: Soap; Brand: Dove; Review: ok; Rating: 3.0/5.0")


def test_missing_fields_are_left_out_cleanly():
    d = templates.get_domain("amazon")
    line = templates.pretrain_line(d, x("Soap", 4.0))  # no brand, no review
    assert line == "Title: Soap; Rating: 4.0/5.0"
    assert "Brand" not in line and ";;" not in line
    assert templates.pretrain_line(d, x("Soap")) == "Title: Soap"  # no rating either


def test_movielens_rating_prompt_exact():
    d = templates.get_domain("movielens")
    ctx = [x("Toy Story (1995)", 4.0, genres="Animation, Children's, Comedy"),
           x("Heat (1995)", 5.0, genres="Action, Crime, Thriller")]
    prompt, response = templates.rating_pair(d, ctx)
    assert prompt == ("### Instruction:\nPredict rating for the last item.\n"
                      "Given the interaction history of a user with movies/shows as follows:\n\n"
                      "Title: Toy Story (1995); Genres: Animation, Children's, Comedy; Rating: 4.0/5.0\n"
                      "Title: Heat (1995); Genres: Action, Crime, Thriller; Rating:\n\n### Response:")
    assert response == "5.0/5.0"


def test_movielens_next_item_response_omits_genres():
    d = templates.get_domain("movielens")
    prompt, response = templates.next_item_pair(d, [x("Heat (1995)", 5.0, genres="Action")],
                                                Item("2", title="Casino (1995)", genres="Drama"))
    assert prompt == ("### Instruction:\nPredict the next item.\n"
                      "Given the interaction history of a user with movies/shows as follows:\n\n"
                      "Title: Heat (1995); Genres: Action\n\n### Response:")
    assert response == "Title: Casino (1995)"


def test_amazon_next_item_has_no_review_or_rating():
    d = templates.get_domain("amazon")
    prompt, response = templates.next_item_pair(d, [x("Soap", 5.0, "nice", brand="Dove")],
                                                Item("b", title="Gel", brand="Axe"))
    assert prompt.endswith("\n\nTitle: Soap; Brand: Dove\n\n### Response:")
    assert response == "Title: Gel; Brand: Axe"


def test_amazon_books_quirks():
    d = templates.get_domain("amazon_books")
    assert templates.pretrain_line(d, x("Dune", 5.0, "classic", brand="Frank Herbert")) == \
        "Title: Dune; Brand: Frank Herbert; Review: classic; Rating: 5.0/5.0"
    prompt, _ = templates.rating_pair(d, [x("Dune", 5.0, "classic", brand="Frank Herbert")])
    assert prompt.endswith("Title: Dune; Author: Frank Herbert; Review: classic; Rating:\n\n### Response:")
    _, response = templates.next_item_pair(d, [], Item("1", title="Emma", brand="Jane Austen"))
    assert response == "Title: Emma; Author: Jane Austen;"


@pytest.mark.parametrize("name,line", [
    ("anime", "Title: Akira; Genres: Action, Sci-Fi; Rating: 9.0/10.0"),
    ("bookcrossing", "Title: Akira; Author: K. Otomo; Rating: 9.0/10.0"),
    ("food", "Title: Akira; Review: tasty; Rating: 9.0/5.0"),
    ("goodreads", "Title: Akira; Author: K. Otomo; Genres: Action, Sci-Fi; Review: tasty; Rating: 9.0/5.0"),
    ("hotelrec", "Title: Akira; City: Tokyo; Review: tasty; Rating: 9.0/5.0"),
    ("netflix", "Title: Akira; Rating: 9.0/5.0"),
    ("steam", "Title: Akira"),
    ("wikirec", "Title: Akira; Description: a film"),
    ("yelp", "Title: Akira; City: Tokyo; Review: tasty; Rating: 9.0/5.0"),
])
def test_pretrain_lines_per_domain(name, line):
    item = x("Akira", 9.0, "tasty", genres="Action, Sci-Fi", author="K. Otomo", city="Tokyo", description="a film",
             brand="B")
    assert templates.pretrain_line(templates.get_domain(name), item) == line


@pytest.mark.parametrize("name,noun", [("amazon", "products"), ("amazon_books", "books"), ("anime", "movies/shows"),
                                       ("bookcrossing", "books"), ("food", "food recipes"), ("goodreads", "books"),
                                       ("hotelrec", "hotels"), ("movielens", "movies/shows"),
                                       ("netflix", "movies/shows"), ("steam", "video games"),
                                       ("wikirec", "Wikipedia articles"), ("yelp", "businesses")])
def test_headers(name, noun):
    assert templates.get_domain(name).header == f"Given the interaction history of a user with {noun} as follows:"


def test_goodreads_response_omits_genres_and_steam_wikirec_have_no_rating_task():
    d = templates.get_domain("goodreads")
    _, response = templates.next_item_pair(d, [], Item("1", title="Emma", author="Jane Austen", genres="romance"))
    assert response == "Title: Emma; Author: Jane Austen"
    for name in ("steam", "wikirec"):
        with pytest.raises(ValueError, match="no rating template"):
            templates.rating_pair(templates.get_domain(name), [x("A", 1.0)])
    assert len([d for d in templates.DOMAINS.values() if d.rating]) == 10  # "ten formats" (B.2.1)
    assert len(templates.DOMAINS) == 12  # "twelve formats" (B.2.2)


def test_prompt_serialisation_rules():
    d = templates.get_domain("yelp")
    prompt, response = templates.rating_pair(d, [x("Cafe", 4.0, "good", city="Reno"), x("Bar", 2.0, "meh", city="Reno")])
    assert prompt.startswith("### Instruction:\nPredict rating for the last item.\nGiven")
    assert prompt.endswith("; Rating:\n\n### Response:")  # no trailing space or newline
    assert "as follows:\n\nTitle: Cafe" in prompt  # one blank line after the header
    assert response == "2.0/5.0" and not response.startswith((" ", "\n"))


def test_item_tokens_replace_every_field_and_the_rating_label():
    """A source with item_tokens: each item is its one token, a rating its one string right after it; App. B's
    headers, instructions and blank lines stay."""
    from data.prepare.config import SourceConfig

    d = templates.source_domain(SourceConfig("ml", "movielens", "movielens", item_tokens=True))
    assert templates.get_domain("movielens").item_tokens is None and d.item_tokens == "ml"
    toy = Interaction("u", Item("1", title="Toy Story (1995)", genres="Animation"), rating=4.0)
    heat = Interaction("u", Item("6", title="Heat (1995)", genres="Action"), rating=5.0)
    assert templates.pretrain_document(d, [toy, heat]) == (
        "Given the interaction history of a user with movies/shows as follows:\n\n<ml#1>4.0/5.0\n<ml#6>5.0/5.0")
    prompt, response = templates.rating_pair(d, [toy, heat])
    assert prompt == ("### Instruction:\nPredict rating for the last item.\n"
                      "Given the interaction history of a user with movies/shows as follows:\n\n"
                      "<ml#1>4.0/5.0\n<ml#6>\n\n### Response:") and response == "5.0/5.0"
    prompt, response = templates.next_item_pair(d, [toy], heat.item)
    assert prompt.endswith("as follows:\n\n<ml#1>\n\n### Response:") and response == "<ml#6>"
    assert templates.item_text(d, heat.item) == "<ml#6>"
    books = templates.source_domain(SourceConfig("b", "amazon", "amazon_books", item_tokens=True))
    assert templates.next_item_line(books, books.history, toy) == "<b#1>"  # no trailing ";" after a token
