namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// The guidance-scale embedding that guidance-distilled UNets (LCM) take as <c>timestep_cond</c>: diffusers'
/// <c>get_guidance_scale_embedding(w, dim)</c> (VDM's Fourier features of 1000·w, sines then cosines, zero-padded to an
/// odd dim), computed step by step in float32 as torch does so that the large arguments (up to ~10⁴) round the same.
/// </summary>
public static class GuidanceScaleEmbedding
{
    /// <param name="w">guidance_scale − 1, as LatentConsistencyModelPipeline passes it.</param>
    public static float[] Compute(double w, int dim)
    {
        if (dim < 4) throw new ArgumentOutOfRangeException(nameof(dim), dim, "the embedding needs at least 4 dimensions");
        var embedding = new float[dim];
        int half = dim / 2;
        float scaledW = (float)w * 1000f;
        float exponent = (float)Math.Log(10000.0) / (half - 1);
        for (int k = 0; k < half; k++)
        {
            float frequency = MathF.Exp(k * -exponent);
            float argument = scaledW * frequency;
            embedding[k] = (float)Math.Sin(argument);
            embedding[half + k] = (float)Math.Cos(argument);
        }
        return embedding;
    }
}
