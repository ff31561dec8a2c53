using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Where the denoise loop starts: the latents it begins with and the first step of the schedule it runs. The loop is the
/// same for text-to-image (<see cref="NoiseStart"/>) and image-to-image (<see cref="ImageStart"/>); only this part differs.
/// </summary>
internal abstract class LatentStart
{
    /// <summary>noise or image: the denoise span's sdf.start tag.</summary>
    public abstract string Name { get; }

    /// <summary>The span preparing the start runs in, when it is a phase of its own (encoding an image); null when it is not.</summary>
    public virtual string? SpanName => null;

    /// <summary>Whether the same request starts from the same latents again (not for an encoder that samples without a seed).</summary>
    public virtual bool Reproducible => true;

    /// <summary>Writes the starting latents for a schedule set with <see cref="IScheduler.SetTimesteps"/>; returns the first step's index.</summary>
    public abstract int Prepare(IScheduler scheduler, Span<float> latents, IGaussianNoise noise, RunOptions runOptions);
}

/// <summary>Text-to-image: unit noise (the seed's, or given) times the scheduler's initial sigma; every step runs.</summary>
internal sealed class NoiseStart(float[]? given) : LatentStart
{
    public override string Name => "noise";

    public override int Prepare(IScheduler scheduler, Span<float> latents, IGaussianNoise noise, RunOptions runOptions)
    {
        if (given is not null) given.CopyTo(latents);
        else noise.Fill(latents);
        float sigma = scheduler.InitNoiseSigma;
        for (int k = 0; k < latents.Length; k++) latents[k] *= sigma;
        return 0;
    }
}

/// <summary>
/// Image-to-image as diffusers' StableDiffusionImg2ImgPipeline: encode the picture (mean + std·ε, × scaling factor), skip the
/// first steps − int(steps·strength) steps, add noise to the level of the first step left (add_noise, no initial-sigma factor).
/// From the seed's stream it draws ε, then the added noise, each unless given, so the step noise after them is the same either way.
/// </summary>
/// <param name="begin">The first step that runs (<see cref="BeginIndex"/>, as the plan computed it).</param>
internal sealed class ImageStart(VaeEncoderModel encoder, InitImage image, int begin, float[]? encoderNoise, float[]? addedNoise)
    : LatentStart
{
    public override string Name => "image";
    public override string? SpanName => "encode image";
    public override bool Reproducible => encoder.Component.Kind != VaeEncoderKind.SampledInGraph;

    /// <summary>The first step image-to-image runs: diffusers' t_start = steps − min(int(steps·strength), steps).</summary>
    public static int BeginIndex(int steps, double strength) => steps - Math.Min((int)(steps * strength), steps);

    /// <summary>The scaled latents of the picture before any noise (diffusers' init_latents), from the last <see cref="Prepare"/>.</summary>
    public float[] EncodedLatents { get; private set; } = [];

    public override int Prepare(IScheduler scheduler, Span<float> latents, IGaussianNoise noise, RunOptions runOptions)
    {
        var epsilon = new float[latents.Length];
        if (encoderNoise is not null) encoderNoise.CopyTo(epsilon, 0);
        else noise.Fill(epsilon);
        var added = new float[latents.Length];
        if (addedNoise is not null) addedNoise.CopyTo(added, 0);
        else noise.Fill(added);

        encoder.SetImage(image.Rgb);
        EncodedLatents = new float[latents.Length];
        encoder.Encode(epsilon, EncodedLatents, runOptions);
        scheduler.SetBeginIndex(begin);
        scheduler.AddNoise(EncodedLatents, added, begin, latents);
        return begin;
    }
}
