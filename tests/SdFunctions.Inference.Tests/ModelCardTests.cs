using SdFunctions.Inference.Bundle;

namespace SdFunctions.Inference.Tests;

/// <summary>sdf_model.json: the bundled model's card sets its guidance and prompts; a bad card is named when the bundle opens.</summary>
public class ModelCardTests
{
    private static string BundledModel => Cli.CliApp.BundledModel;

    [Fact]
    public void TheBundledModelsCardSetsTheGuidanceExceptWhereTheFamilysRuleDecides()
    {
        var profile = ModelProfile.Read(ModelBundle.Open(BundledModel));
        Assert.Equal("sdref-tiny-shapes", profile.Model);
        Assert.Equal((64, 64), (profile.Width, profile.Height));
        Assert.All(profile.Schedulers.Where(s => s.Scheduler != "lcm"), s => Assert.Equal((50, 3.0), (s.Steps, s.GuidanceScale)));
        Assert.Equal((4, 1.0), (profile.DefaultsFor("lcm").Steps, profile.DefaultsFor("lcm").GuidanceScale)); // a few-step sampler on a plain UNet: 4 steps, no guidance
        Assert.Equal(["full", "tiny"], profile.Decoders); // the trained TAESD beside the VAE
        Assert.True(profile.ImageToImage);
        Assert.All(profile.ExamplePrompts, p => Assert.NotNull(Quality.ShapesCaption.TryParse(p)));
        Assert.Equal(7.5, ModelProfile.Read(ModelBundle.Open(Fixtures.TinySd)).DefaultsFor(null).GuidanceScale); // no card: SD's default
    }

    [Theory]
    [InlineData("""{"guidanceScale": 31}""", "guidanceScale must be in 0–30")]
    [InlineData("""{"steps": 0}""", "steps must be in 1–150")]
    [InlineData("""{"guidance": 3}""", "not a model card")]
    [InlineData("""{"examplePrompts": "a red circle"}""", "not a model card")]
    [InlineData("""not json""", "not a model card")]
    public void ABadCardIsNamedWhenTheBundleOpens(string card, string expected)
    {
        string dir = Fixtures.CopyFolder(Fixtures.TinyShapes, Fixtures.TempDirectory("card"));
        File.WriteAllText(Path.Combine(dir, ModelCard.FileName), card);
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open(dir));
        Assert.Contains(ModelCard.FileName, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public async Task AnOptimizedBundleKeepsItsSourcesCard()
    {
        string dir = Fixtures.TempDirectory("card-optimized");
        await Optimizer.BundleOptimizer.OptimizeAsync(new Optimizer.OptimizeOptions { ModelDirectory = BundledModel, OutputDirectory = dir, TomeRatio = 0.4 });
        Assert.Equal(3.0, ModelProfile.Load(dir).DefaultsFor(null).GuidanceScale); // sdf_profile.json, written from the copied card
        Assert.Equal(ModelBundle.Open(BundledModel).Card!.ExamplePrompts, ModelBundle.Open(dir).Card!.ExamplePrompts);
    }
}
