using System.Diagnostics;
using System.Text.Json.Serialization;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Inference.Quality;

/// <summary>One prompt and seed both pipelines draw.</summary>
public sealed record EvaluationCase(string Prompt, long Seed)
{
    /// <summary>
    /// <paramref name="count"/> pairs: the prompts in turn, each with the next seed from <paramref name="firstSeed"/>, so 100
    /// pairs of the 90 shapes captions cover every caption once and ten twice, each with a seed of its own.
    /// </summary>
    public static IReadOnlyList<EvaluationCase> Cycle(IReadOnlyList<string> prompts, int count, long firstSeed) =>
        [.. Enumerable.Range(0, count).Select(i => new EvaluationCase(prompts[i % prompts.Count], firstSeed + i))];
}

/// <summary>How one case came out: closeness of the candidate's picture to the reference's, and, for a caption of the shapes grammar, both verdicts.</summary>
public sealed record EvaluatedImage(string Prompt, long Seed, double Psnr, double Ssim, ShapeVerdict? Reference, ShapeVerdict? Candidate,
    bool? ReferenceRight, bool? CandidateRight)
{
    [JsonIgnore] public byte[] ReferenceRgb { get; init; } = [];
    [JsonIgnore] public byte[] CandidateRgb { get; init; } = [];
}

/// <summary>A share of cases with its 95 % Wilson score interval (the spread a count of this size allows).</summary>
public sealed record Accuracy(int Right, int Total, double Share, double Low, double High)
{
    public static Accuracy Of(int right, int total)
    {
        if (total == 0) return new(0, 0, double.NaN, double.NaN, double.NaN);
        const double z = 1.959964;
        double p = (double)right / total, denominator = 1 + z * z / total;
        double centre = (p + z * z / (2 * total)) / denominator, half = z * Math.Sqrt(p * (1 - p) / total + z * z / (4.0 * total * total)) / denominator;
        return new(right, total, p, Math.Max(0, centre - half), Math.Min(1, centre + half));
    }

    public override string ToString() => Total == 0 ? "–" : $"{Share * 100:F1} % ({Right}/{Total}, 95 % CI {Low * 100:F0}–{High * 100:F0} %)";
}

/// <summary>A spread of per-image figures: mean, median, the 10th percentile and the worst.</summary>
public sealed record Spread(double Mean, double Median, double P10, double Min)
{
    public static Spread Of(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return new(double.NaN, double.NaN, double.NaN, double.NaN);
        return new(sorted.Average(), sorted[sorted.Length / 2], sorted[(int)Math.Floor(0.1 * (sorted.Length - 1))], sorted[0]);
    }
}

/// <summary>What an evaluation found, over all its cases.</summary>
/// <param name="Psnr">dB over the RGB bytes; identical pictures count as <see cref="double.PositiveInfinity"/> (the mean is then ∞ too).</param>
/// <param name="Ssim">Gaussian-window SSIM on R, G and B, averaged (see <see cref="ImageQuality.Ssim"/>).</param>
/// <param name="Judged">Cases whose prompt is a caption of the shapes grammar (the judge's accuracy is over these).</param>
public sealed record EvaluationSummary(int Cases, int Identical, Spread Psnr, Spread Ssim, int Judged, Accuracy ReferenceAccuracy, Accuracy CandidateAccuracy,
    int LostByCandidate, int GainedByCandidate)
{
    public static EvaluationSummary Of(IReadOnlyList<EvaluatedImage> images)
    {
        var judged = images.Where(i => i.ReferenceRight is not null).ToList();
        return new(images.Count, images.Count(i => double.IsPositiveInfinity(i.Psnr)), Spread.Of(images.Select(i => i.Psnr)), Spread.Of(images.Select(i => i.Ssim)),
            judged.Count, Accuracy.Of(judged.Count(i => i.ReferenceRight == true), judged.Count), Accuracy.Of(judged.Count(i => i.CandidateRight == true), judged.Count),
            judged.Count(i => i.ReferenceRight == true && i.CandidateRight == false), judged.Count(i => i.ReferenceRight == false && i.CandidateRight == true));
    }
}

/// <summary>Progress of an evaluation: cases done of all.</summary>
public readonly record struct EvaluationProgress(int Done, int Total, TimeSpan Elapsed);

/// <summary>One side of an evaluation: a pipeline and what it runs (scheduler, steps, guidance, decoder, DeepCache); prompt and seed come from each case.</summary>
public sealed record EvaluationSide(StableDiffusionPipeline Pipeline, GenerationRequest Recipe);

/// <summary>
/// Draws the same prompts × seeds with a reference and a candidate (an optimized bundle, another scheduler, decoder or DeepCache
/// interval) and says how far the candidate's pictures are from the reference's (PSNR, SSIM) and, for captions of the shapes
/// grammar, whether the judge reads each picture as its caption. A seed gives both the same initial noise.
/// </summary>
public static class QualityEvaluator
{
    public static async Task<IReadOnlyList<EvaluatedImage>> RunAsync(EvaluationSide reference, EvaluationSide candidate,
        IReadOnlyList<EvaluationCase> cases, IProgress<EvaluationProgress>? progress = null, CancellationToken ct = default)
    {
        var (a, b) = (reference.Pipeline, candidate.Pipeline);
        if ((a.Width, a.Height) != (b.Width, b.Height))
            throw new ArgumentException($"The reference draws {a.Width}×{a.Height} and the candidate {b.Width}×{b.Height}: PSNR and SSIM need one size.");
        var images = new List<EvaluatedImage>(cases.Count);
        var clock = Stopwatch.StartNew();
        foreach (var c in cases)
        {
            byte[] expected = (await a.GenerateAsync(reference.Recipe with { Prompt = c.Prompt, Seed = c.Seed }, cancellationToken: ct)).Rgb;
            byte[] actual = (await b.GenerateAsync(candidate.Recipe with { Prompt = c.Prompt, Seed = c.Seed }, cancellationToken: ct)).Rgb;
            images.Add(Compare(c, expected, actual, a.Width, a.Height));
            progress?.Report(new EvaluationProgress(images.Count, cases.Count, clock.Elapsed));
        }
        return images;
    }

    /// <summary>One case's figures from the two pictures (height × width × 3 bytes each).</summary>
    public static EvaluatedImage Compare(EvaluationCase c, byte[] reference, byte[] candidate, int width, int height)
    {
        var caption = ShapesCaption.TryParse(c.Prompt);
        var rv = caption is null ? null : ShapeJudge.Judge(reference, width, height);
        var cv = caption is null ? null : ShapeJudge.Judge(candidate, width, height);
        return new EvaluatedImage(c.Prompt, c.Seed, ImageQuality.Psnr(reference, candidate), ImageQuality.Ssim(reference, candidate, width, height),
            rv, cv, rv?.Matches(caption!), cv?.Matches(caption!))
        { ReferenceRgb = reference, CandidateRgb = candidate };
    }
}
