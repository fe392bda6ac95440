"""Word material of the demo's review comments: an opener, a core clause and a closer.

The core clause carries the sentiment. Clause pairs are dealt to the splits, so every
test comment has wording that no training comment has.
"""

OPENERS = (
    "Honestly,",
    "Well,",
    "To be fair,",
    "Looking at it again,",
    "In my opinion,",
    "Frankly,",
    "So,",
    "At first glance,",
)

CLOSERS = (".", "!", ", no doubt.", ", really.", " in every way.", ", to be honest.")

CLAUSES = (
    ("I love how this picture turned out", "I hate how this picture turned out"),
    ("what a wonderful shot", "what a dreadful shot"),
    ("this is a delightful photo", "this is a disappointing photo"),
    ("the result looks great", "the result looks awful"),
    ("I am really pleased with this one", "I am really unhappy with this one"),
    ("this picture makes me happy", "this picture makes me sad"),
    ("it came out beautifully", "it came out terribly"),
    ("it is a lovely, charming image", "it is a dull, ugly image"),
    ("this is one of my favourites", "this is one of my worst"),
    ("I adore the mood of this shot", "I dislike the mood of this shot"),
    ("it is a fantastic picture", "it is a horrible picture"),
    ("this looks superb", "this looks poor"),
    ("I am proud of this photo", "I am ashamed of this photo"),
    ("it turned out perfect", "it turned out ruined"),
    ("such a pleasant picture", "such an unpleasant picture"),
    ("this is excellent work", "this is awful work"),
    ("the framing is excellent", "the framing is clumsy"),
    ("I could look at this all day", "I never want to see this again"),
    ("this is a happy, cheerful picture", "this is a gloomy, depressing picture"),
    ("the light in this one is gorgeous", "the light in this one is harsh and ugly"),
    ("it is a real gem", "it is a total failure"),
    ("I am thrilled with how sharp it is", "I am annoyed by how blurry it is"),
    ("this photo is a joy to look at", "this photo is painful to look at"),
    ("I really like it", "I really dislike it"),
    ("it is an amazing capture", "it is a terrible capture"),
    ("the colours make me smile", "the colours make me wince"),
    ("everything about it is good", "everything about it is bad"),
    ("I would happily print this one", "I would gladly delete this one"),
    ("it is a superb and moving shot", "it is a boring and lifeless shot"),
    ("this is a stunning result", "this is a miserable result"),
)
"""Pairs of (positive, negative) core clauses. A pair shares its wording apart from the
sentiment, so both clauses of a pair go to the same split: otherwise a test clause would
differ from a training clause only by the word that carries the sentiment."""
