"""The cluster path: Spark with delta-spark over the same Delta tables the Python sink writes.

``spark.jars.packages`` resolves the Delta jars from Maven Central (Ivy, cached under the state
directory); ``master`` is ``local[2]`` here and a ``spark://`` URL on a cluster. The jobs:

* ``generator_stats``: per run and generator version, how many samples each stage saw, the
  acceptance rate and the label budget (accepted samples are labels the pipeline saved; samples
  routed to review are the ones a human still labels). Written to the ``generator_stats`` table.
* ``compact``: Delta ``OPTIMIZE`` of a table (bin-packing small files), as a cluster would run it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import infra
from schemas.tables import GENERATOR_STATS

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.1.0"  # matches pyspark 4.1 (Scala 2.13)
IVY_SETTINGS = Path(infra.__file__).parent / "spark" / "ivysettings.xml"  # Maven Central only


class SparkConfig(BaseModel):
    """How to reach Spark. Example: ``SDG_SPARK__MASTER=spark://spark-master:7077``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    master: str = Field(default="local[2]", description="local[N] or a cluster's master URL.")
    packages: str = Field(default=DELTA_PACKAGE, description="spark.jars.packages (Maven coordinates).")
    ivy_dir: Path | None = Field(default=None, description="Ivy cache of the resolved jars (default: <state_dir>/ivy).")
    conf: dict[str, str] = Field(default_factory=dict, description="Any further Spark settings, passed through.")


def session(config: SparkConfig, *, ivy_dir: Path, app_name: str = "sdg-edge") -> Any:
    """A SparkSession with the Delta extensions (the first call resolves the jars)."""
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master(config.master).appName(app_name)
               .config("spark.jars.packages", config.packages)
               .config("spark.jars.ivy", str((config.ivy_dir or ivy_dir).resolve()))
               .config("spark.jars.ivySettings", str(IVY_SETTINGS))
               .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
               .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    if config.master.startswith("local"):  # Spark's 200 shuffle partitions cost more than they split here
        builder = builder.config("spark.sql.shuffle.partitions", "4")
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def generator_stats(spark: Any, root: Path, *, run: str | None = None) -> Any:
    """Per (run, generator, version): stage counts, acceptance rate, mean labeler confidence and agreement,
    and the label budget, from the lineage table; a Spark DataFrame with the ``generator_stats`` schema."""
    from pyspark.sql import functions as F

    lineage = spark.read.format("delta").load(str(root / "lineage"))
    if run is not None:
        lineage = lineage.where(F.col("run_id") == run)

    def count(stage: str) -> Any:
        return F.count_distinct(F.when(F.col("stage") == stage, F.col("sample_id"))).cast("long").alias(stage)

    labeled = F.col("stage") == "labeled"
    stats = (lineage.groupBy("run_id", "generator", "generator_version")
             .agg(count("generated"), count("labeled"), count("accepted"), count("review"), count("rejected"),
                  F.avg(F.when(labeled, F.col("confidence"))).alias("mean_confidence"),
                  F.avg(F.when(labeled, F.col("agrees").cast("double"))).alias("agreement")))
    decided = F.col("accepted") + F.col("review") + F.col("rejected")
    now = int(time.time() * 1000)
    return (stats
            .withColumn("acceptance_rate", F.when(decided > 0, F.col("accepted") / decided))
            .withColumn("labels_saved", F.col("accepted"))
            .withColumn("labels_to_review", F.col("review"))
            .withColumn("computed_ms", F.lit(now).cast("long"))
            .withColumn("date", F.date_format(F.timestamp_millis(F.lit(now)), "yyyy-MM-dd"))
            .select(*GENERATOR_STATS.names))


def write_generator_stats(spark: Any, root: Path, *, run: str | None = None) -> int:
    """Compute ``generator_stats`` and write it to its Delta table, replacing the rows of the runs it covers.

    Returns:
        The number of rows written.
    """
    from delta.tables import DeltaTable

    stats = generator_stats(spark, root, run=run).cache()
    runs = sorted(r["run_id"] for r in stats.select("run_id").distinct().collect())
    if not runs:
        return 0
    writer = stats.write.format("delta").partitionBy("run_id", "date")
    target = str(root / "generator_stats")
    if DeltaTable.isDeltaTable(spark, target):
        quoted = ", ".join("'" + r.replace("'", "''") + "'" for r in runs)
        writer = writer.mode("overwrite").option("replaceWhere", f"run_id IN ({quoted})")
    writer.save(target)
    return stats.count()


def compact(spark: Any, root: Path, table: str) -> dict[str, Any]:
    """Delta OPTIMIZE (bin-packing compaction) of ``table``; Delta's metrics (files added and removed, ...)."""
    from delta.tables import DeltaTable

    metrics = DeltaTable.forPath(spark, str(root / table)).optimize().executeCompaction().collect()[0]["metrics"]
    return metrics.asDict(recursive=True)
