using System.Text.Json;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;

namespace SdFunctions.Cli.Bench;

/// <summary>
/// What a row's speed costs in the picture, measured on the trained tiny-shapes model: the row's optimizer recipe applied to it
/// (calibrated as <c>sdf optimize</c> ships it: the card's prompts and steps) and the row's scheduler, steps, decoder and
/// DeepCache interval, against FP32 tiny-shapes with the same recipe (no DeepCache), over caption × seed pairs.
/// </summary>
/// <param name="Recipe">What both sides ran, e.g. "dpmpp-2m 20 steps, guidance 3, full decoder".</param>
public sealed record QualityFigures(string Recipe, int Pairs, Accuracy Fp32, Accuracy Candidate, double PsnrMedian, double SsimMean)
{
    /// <summary>Judge accuracy points lost against FP32 (negative: gained).</summary>
    public double PointsLost => (Fp32.Share - Candidate.Share) * 100;
}

/// <summary>Measures <see cref="QualityFigures"/> for the bench's rows; the optimized tiny-shapes variants are made once under the work folder.</summary>
public sealed class BenchQuality(string shapesBundle, string work, int pairs, IProgress<string> progress)
{
    /// <summary>The trained model's guidance (its card's): at the rows' own 7.5 its multistep solvers fall apart, FP32 included.</summary>
    public const double Guidance = 3.0;

    /// <summary>The recipe the variant rows are judged with: the 20-step DPM++ run their UNet step is timed in.</summary>
    public static GenerationRequest VariantRecipe => new() { Prompt = "", Scheduler = "dpmpp-2m", Steps = 20, GuidanceScale = Guidance };

    public Task<QualityFigures> ForVariantAsync(BenchVariant variant, CancellationToken ct) => MeasureAsync(variant, VariantRecipe, ct);

    /// <summary>A time-to-image row (at a DeepCache interval); null for the few-step rows, which need a trained LCM model.</summary>
    public async Task<QualityFigures?> ForImageAsync(ImageRow row, int interval, CancellationToken ct)
    {
        if (row.Variant == BenchVariant.FewStep.Name) return null;
        var recipe = new GenerationRequest
        {
            Prompt = "", Scheduler = row.Scheduler, Steps = row.Steps, GuidanceScale = Guidance, Decoder = row.Decoder, CacheInterval = interval > 1 ? interval : null,
        };
        return await MeasureAsync(BenchVariant.All.Single(v => v.Name == row.Variant), recipe, ct);
    }

    private async Task<QualityFigures> MeasureAsync(BenchVariant variant, GenerationRequest recipe, CancellationToken ct)
    {
        string candidateDir = await EnsureVariantAsync(variant, ct);
        var options = new PipelineOptions { WarmUp = false };
        using var reference = await StableDiffusionPipeline.LoadAsync(shapesBundle, options, cancellationToken: ct);
        using var candidate = await StableDiffusionPipeline.LoadAsync(candidateDir, options, cancellationToken: ct);
        var cases = EvaluationCase.Cycle([.. ShapesCaption.All.Select(c => c.ToString())], pairs, firstSeed: 1000);
        var images = await QualityEvaluator.RunAsync(new EvaluationSide(reference, recipe with { CacheInterval = null }), new EvaluationSide(candidate, recipe), cases, null, ct);
        var s = EvaluationSummary.Of(images);
        string description = $"{recipe.Scheduler} {recipe.Steps} steps, guidance {Guidance:0.#}, {recipe.Decoder ?? "full"} decoder{(recipe.CacheInterval is { } k ? $", DeepCache every {k}" : "")}";
        var figures = new QualityFigures(description, s.Cases, s.ReferenceAccuracy, s.CandidateAccuracy, s.Psnr.Median, s.Ssim.Mean);
        progress.Report($"quality of {variant.Name} ({description}) on tiny-shapes: judge {figures.Candidate} (FP32 {figures.Fp32}), PSNR median {figures.PsnrMedian:F1} dB, SSIM {figures.SsimMean:F3}");
        return figures;
    }

    /// <summary>The variant's optimizer recipe applied to tiny-shapes, made once and reused while the recipe and the model are the same.</summary>
    private async Task<string> EnsureVariantAsync(BenchVariant variant, CancellationToken ct)
    {
        if (!variant.Int8 && variant.TomeRatio == 0 && !variant.DeepCache) return shapesBundle;
        string dir = Path.Combine(work, "quality", variant.Name);
        string stamp = Path.Combine(dir, ".bench-variant.json");
        string recipe = JsonSerializer.Serialize(new
        {
            source = shapesBundle, unet = File.GetLastWriteTimeUtc(ModelBundle.Open(shapesBundle).Unet.Path).Ticks, variant, quantization = new QuantizationOptions(),
        });
        if (File.Exists(stamp) && await File.ReadAllTextAsync(stamp, ct) == recipe) return dir;
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        await BundleOptimizer.OptimizeAsync(new OptimizeOptions
        {
            ModelDirectory = shapesBundle, OutputDirectory = dir, TomeRatio = variant.TomeRatio, FuseAttention = true, Batch = variant.Batch,
            DeepCache = variant.DeepCache, QuantizeTextEncoder = variant.Int8TextEncoder, Quantization = variant.Int8 ? new QuantizationOptions() : null,
            Fidelity = false, // measured here, on more pairs
        }, new SynchronousProgress(m => progress.Report($"optimize tiny-shapes {variant.Name}: {m}")), ct);
        await File.WriteAllTextAsync(stamp, recipe, ct);
        return dir;
    }
}
