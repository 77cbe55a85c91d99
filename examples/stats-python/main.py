import numpy as np
from jinja2 import Template

REPORT = Template("{{ n }} values, mean {{ '%.2f' % mean }}, std {{ '%.2f' % std }}")


def handler(event, context):
    values = np.array(event["values"], dtype=float)
    mean, std = float(values.mean()), float(values.std())
    return {"mean": mean, "std": std, "report": REPORT.render(n=values.size, mean=mean, std=std)}
