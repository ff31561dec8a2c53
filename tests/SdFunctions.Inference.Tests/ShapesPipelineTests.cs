using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// The pipeline on the trained tiny-shapes bundle against diffusers' runs (reference/shapes.json): PNDM 25, DDIM 20 and Euler 20
/// steps at guidance 3 from the given latents; Euler's fractional timesteps go to the float-timestep UNet, as the fixture says.
/// </summary>
public class ShapesPipelineTests
{
    /// <summary>tiny-shapes whose unet/ is its float-timestep export (made once per test run).</summary>
    internal static readonly Lazy<string> FloatTimestepShapes = new(() =>
    {
        string dir = Fixtures.CopyFolder(Fixtures.TinyShapes, Fixtures.TempDirectory("sdf-shapes-float"));
        Directory.Delete(Path.Combine(dir, "unet"), recursive: true);
        Directory.Move(Path.Combine(dir, "unet-float-timestep"), Path.Combine(dir, "unet"));
        return dir;
    });

    [Theory]
    [InlineData("pndm"), InlineData("ddim"), InlineData("euler")]
    public async Task ARunFromGivenLatentsMatchesDiffusersAndIsJudgedRight(string run)
    {
        var meta = Fixtures.Meta("shapes").GetProperty("runs").GetProperty(run);
        string bundle = run == "euler" ? FloatTimestepShapes.Value : Fixtures.TinyShapes;
        using var pipeline = await StableDiffusionPipeline.LoadAsync(bundle, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        string prompt = meta.GetProperty("prompt").GetString()!;
        var result = await pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = prompt, NegativePrompt = "", GuidanceScale = meta.GetProperty("guidance_scale").GetDouble(),
            Steps = meta.GetProperty("num_inference_steps").GetInt32(), Scheduler = run,
            InitialLatents = Fixtures.Floats("shapes", $"{run}/initial_latents"),
        });

        Assert.Equal(meta.GetProperty("num_unet_calls").GetInt32(), result.Timings.UNetRuns.Count);
        // The final latents stay within ±3.4 here (random weights reach ±35); the tiny-sd pipeline bound of 1e-3 max abs applies.
        Close.AllClose(Fixtures.Floats("shapes", $"{run}/final_latents"), result.Latents, 1e-3, $"{run} final latents");
        byte[] expected = Fixtures.Bytes("shapes", $"{run}/image_uint8");
        Assert.True(Close.MaxLevels(expected, result.Rgb) <= 1, $"{run}: a pixel channel differs by {Close.MaxLevels(expected, result.Rgb)} levels from diffusers' image");
        Assert.True(ShapeJudge.Judge(result.Rgb, 64, 64).Matches(ShapesCaption.TryParse(prompt)!));
    }
}
