// ihn::eval — every evaluation metric of ihn in one include: pycocoevalcap-exact BLEU/ROUGE-L/
// CIDEr, a METEOR variant (exact + Porter stem + WordNet synonyms), a rule-based CheXpert-style
// clinical labeller with precision/recall/F1, retrieval recall@K and distinctness, bootstrap
// confidence intervals, and evaluate() which runs them all and writes JSON. Plain C++17 and
// Eigen; no LibTorch.
#pragma once

#include <ihn/eval/bootstrap.hpp>
#include <ihn/eval/chexpert.hpp>
#include <ihn/eval/coco.hpp>
#include <ihn/eval/evaluate.hpp>
#include <ihn/eval/jsonl.hpp>
#include <ihn/eval/meteor.hpp>
#include <ihn/eval/retrieval.hpp>
#include <ihn/eval/text.hpp>
#include <ihn/eval/utf8.hpp>
