"""Writes train.jsonl / test.jsonl: short news-like sentences, each with a topic (task A) and a
sentiment (task B). Deterministic (seeded); rerun to regenerate. The sentences are ours."""
import json
import random

random.seed(7)
SUBJECTS = {
    "sports": ["the home team", "the striker", "our goalkeeper", "the tennis champion", "the relay squad",
               "the coach", "the rookie pitcher", "the cycling team"],
    "business": ["the company", "the startup", "shareholders", "the central bank", "the retail chain",
                 "the airline", "the tech giant's stock", "quarterly earnings"],
    "science": ["the research team", "the new telescope", "the vaccine trial", "the lab", "the rover",
                "the climate study", "the physicists", "the gene therapy"],
    "food": ["the new bistro", "the chef", "the bakery", "this pasta recipe", "the food truck",
             "the tasting menu", "the coffee shop", "the street market"],
}
POSITIVE = {
    "sports": ["won the final in a thrilling match", "broke the national record", "played brilliantly tonight",
               "secured a stunning comeback victory"],
    "business": ["reported record profits", "beat every analyst forecast", "is growing faster than ever",
                 "announced a hugely successful launch"],
    "science": ["made a remarkable discovery", "delivered stunning new images", "achieved a major breakthrough",
                "produced wonderfully clear results"],
    "food": ["serves absolutely delicious dishes", "won a well deserved award", "made the best meal of my year",
             "offers fresh and wonderful flavours"],
}
NEGATIVE = {
    "sports": ["lost badly at home again", "was injured and missed the season", "played a dreadful match",
               "suffered an embarrassing defeat"],
    "business": ["posted a painful loss", "is cutting thousands of jobs", "collapsed after the scandal",
                 "missed its targets by a mile"],
    "science": ["failed to replicate the results", "was hit by a disappointing setback", "lost its funding",
                "produced confusing and useless data"],
    "food": ["served a cold and bland dinner", "was dirty and overpriced", "gave me food poisoning",
             "ruined the dessert completely"],
}
OPENERS = ["", "Yesterday ", "Honestly, ", "Reports say ", "Once again ", "This week "]

rows = []
for topic, subjects in SUBJECTS.items():
    for sentiment, table in [("positive", POSITIVE), ("negative", NEGATIVE)]:
        for subject in subjects:
            for predicate in table[topic]:
                opener = random.choice(OPENERS)
                text = f"{opener}{subject} {predicate}."
                text = text[0].upper() + text[1:]
                rows.append({"text": text, "labels": {"topic": topic, "sentiment": sentiment}})
random.shuffle(rows)
# Some records carry one task only (partial labels).
for i, r in enumerate(rows):
    if i % 10 == 3:
        del r["labels"]["sentiment"]
    elif i % 10 == 7:
        del r["labels"]["topic"]
test, train = rows[:56], rows[56:]
for name, part in [("train.jsonl", train), ("test.jsonl", test)]:
    with open(name, "w") as f:
        for r in part:
            f.write(json.dumps(r) + "\n")
print(len(train), "train,", len(test), "test")
