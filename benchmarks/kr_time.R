# Time pbkrtest's Kenward-Roger on a CSV:
#   Rscript benchmarks/kr_time.R data.csv "formula" group_col reps
# The REML fit is made once (not timed); each run times vcovAdj(fit) plus
# Lb_ddf() for every fixed effect (what lmerTest's summary(ddf = "Kenward-Roger")
# computes).  Prints one JSON object with the elapsed seconds of each run.
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages({library(lme4); library(pbkrtest)})
d <- read.csv(args[1])
d[[args[3]]] <- factor(d[[args[3]]])
fit <- lmer(as.formula(args[2]), data = d, REML = TRUE)
reps <- as.integer(args[4])
p <- length(fixef(fit))
run <- function() {
  Va <- vcovAdj(fit)
  V0 <- vcov(fit)
  vapply(seq_len(p), function(i) { l <- rep(0, p); l[i] <- 1; Lb_ddf(l, V0, Va) }, 0)
}
times <- numeric(reps)
for (i in seq_len(reps)) times[i] <- system.time(ddf <- run())[["elapsed"]]
cat(sprintf('{"times": [%s], "ddf": [%s], "pbkrtest": "%s"}\n',
            paste(sprintf("%.6f", times), collapse = ", "),
            paste(sprintf("%.17g", ddf), collapse = ", "),
            as.character(packageVersion("pbkrtest"))))
