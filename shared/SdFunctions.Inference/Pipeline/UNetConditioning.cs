using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Models;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// How the denoise loop gets a noise prediction from the UNet at one step: which text states it is given, in which batch
/// rows, how many calls it takes and how their outputs combine. The loop is the same for every kind; only this part differs.
/// </summary>
internal abstract class UNetConditioning(UNetModel unet, IUNetInputObserver? observer)
{
    protected UNetModel Unet { get; } = unet;

    /// <summary>cfg, guidance-embedding or none: what the job output records.</summary>
    public abstract string Name { get; }

    /// <summary>The UNet runs each step takes.</summary>
    public abstract int CallsPerStep { get; }

    public int Batch => Unet.Batch;

    /// <summary>
    /// Writes the noise prediction for <paramref name="modelInput"/> (one latent, already scaled) at timestep <paramref name="t"/>,
    /// with the whole UNet or (<see cref="UNetPass.Shallow"/>, DeepCache) its shallow branch on the feature the last full pass cached.
    /// </summary>
    public abstract void Predict(ReadOnlySpan<float> modelInput, double t, Span<float> noisePrediction, RunOptions runOptions, UNetPass pass);

    /// <summary>Every batch row gets the same latents; the UNet runs once.</summary>
    protected void RunOnEveryRow(ReadOnlySpan<float> modelInput, double t, RunOptions runOptions, UNetPass pass)
    {
        for (int row = 0; row < Unet.Batch; row++) modelInput.CopyTo(Unet.Sample.AsSpan(row * modelInput.Length, modelInput.Length));
        observer?.Observe(Unet.Sample, t, Unet.EncoderHiddenStates, Unet.TimestepCond);
        if (pass == UNetPass.Full) Unet.Run(t, runOptions);
        else Unet.RunShallow(t, runOptions);
        observer?.ObserveOutput(Unet.Output, pass == UNetPass.Shallow);
    }

    protected void SetTextStatesOnEveryRow(ReadOnlySpan<float> embedding)
    {
        for (int row = 0; row < Unet.Batch; row++) embedding.CopyTo(Unet.EncoderHiddenStates.AsSpan(row * embedding.Length));
    }
}

/// <summary>Which part of the UNet a call runs: all of it, or DeepCache's shallow branch.</summary>
internal enum UNetPass { Full, Shallow }

/// <summary>
/// Classifier-free guidance: ε = ε_uncond + g·(ε_text − ε_uncond). A batch-2 UNet computes both halves in one call
/// ([negative; prompt], as diffusers batches them); a batch-1 UNet takes two calls, so one static UNet serves both kinds of request.
/// Under DeepCache a batch-1 UNet keeps one cached feature per half, as the batch-2 call keeps one per row.
/// </summary>
internal sealed class ClassifierFreeGuidance : UNetConditioning
{
    private readonly float[] _negative, _prompt, _unconditional, _unconditionalFeature, _textFeature;
    private readonly float _scale;

    public ClassifierFreeGuidance(UNetModel unet, float[] negative, float[] prompt, double scale, IUNetInputObserver? observer) : base(unet, observer)
    {
        if (unet.Batch is not (1 or 2)) throw new ArgumentException($"guidance runs on a batch-1 or batch-2 UNet, not batch {unet.Batch}", nameof(unet));
        _negative = negative;
        _prompt = prompt;
        _scale = (float)scale;
        _unconditional = unet.Batch == 1 ? new float[unet.Output.Length] : [];
        _unconditionalFeature = unet.Batch == 1 ? new float[unet.DeepFeature.Length] : [];
        _textFeature = unet.Batch == 1 ? new float[unet.DeepFeature.Length] : [];
        if (unet.Batch == 2)
        {
            negative.CopyTo(unet.EncoderHiddenStates, 0);
            prompt.CopyTo(unet.EncoderHiddenStates, negative.Length);
        }
    }

    public override string Name => "cfg";
    public override int CallsPerStep => Unet.Batch == 2 ? 1 : 2;

    public override void Predict(ReadOnlySpan<float> modelInput, double t, Span<float> noisePrediction, RunOptions runOptions, UNetPass pass)
    {
        int n = modelInput.Length;
        ReadOnlySpan<float> unconditional, text;
        if (Unet.Batch == 2)
        {
            RunOnEveryRow(modelInput, t, runOptions, pass);
            unconditional = Unet.Output.AsSpan(0, n);
            text = Unet.Output.AsSpan(n, n);
        }
        else
        {
            RunHalf(_negative, _unconditionalFeature, modelInput, t, runOptions, pass);
            Unet.Output.CopyTo(_unconditional, 0);
            RunHalf(_prompt, _textFeature, modelInput, t, runOptions, pass);
            unconditional = _unconditional;
            text = Unet.Output;
        }
        for (int k = 0; k < n; k++) noisePrediction[k] = unconditional[k] + _scale * (text[k] - unconditional[k]);
    }

    // One half of a batch-1 guided step; the UNet's one feature buffer is swapped with this half's cached feature.
    private void RunHalf(float[] textStates, float[] feature, ReadOnlySpan<float> modelInput, double t, RunOptions runOptions, UNetPass pass)
    {
        SetTextStatesOnEveryRow(textStates);
        if (pass == UNetPass.Shallow) feature.CopyTo(Unet.DeepFeature, 0);
        RunOnEveryRow(modelInput, t, runOptions, pass);
        if (pass == UNetPass.Full && feature.Length > 0) Unet.DeepFeature.CopyTo(feature, 0);
    }
}

/// <summary>
/// No guidance (scale ≤ 1): one conditional pass. A UNet fixed at batch 2 runs the same input in both rows and the first is used.
/// </summary>
internal class NoGuidance : UNetConditioning
{
    public NoGuidance(UNetModel unet, float[] prompt, IUNetInputObserver? observer) : base(unet, observer) => SetTextStatesOnEveryRow(prompt);

    public override string Name => "none";
    public override int CallsPerStep => 1;

    public override void Predict(ReadOnlySpan<float> modelInput, double t, Span<float> noisePrediction, RunOptions runOptions, UNetPass pass)
    {
        RunOnEveryRow(modelInput, t, runOptions, pass);
        Unet.Output.AsSpan(0, modelInput.Length).CopyTo(noisePrediction);
    }
}

/// <summary>
/// Guidance distilled into the UNet (LCM): one conditional pass that also takes the guidance scale as an embedding
/// (<c>timestep_cond</c> = <see cref="GuidanceScaleEmbedding"/> of w = scale − 1), the same at every step.
/// </summary>
internal sealed class EmbeddedGuidance : NoGuidance
{
    public EmbeddedGuidance(UNetModel unet, float[] prompt, double scale, IUNetInputObserver? observer) : base(unet, prompt, observer)
    {
        float[] embedding = GuidanceScaleEmbedding.Compute(scale - 1, unet.TimestepCondDim);
        for (int row = 0; row < unet.Batch; row++) embedding.CopyTo(unet.TimestepCond, row * embedding.Length);
    }

    public override string Name => "guidance-embedding";
}
