namespace SdFunctions.Inference.Quality;

/// <summary>
/// The caption grammar of the trained tiny-shapes model: "a {colour} {shape} on a {background} background", colour ≠
/// background, from six colours and three shapes (90 captions). A prompt of this grammar says what its picture must show,
/// so <see cref="ShapeJudge"/> can check it.
/// </summary>
public sealed record ShapesCaption(string Colour, string Shape, string Background)
{
    /// <summary>The palette the pictures were drawn from (before a ±12 jitter per channel), in the order the grammar lists it.</summary>
    public static readonly IReadOnlyList<(string Name, byte R, byte G, byte B)> Palette =
    [
        ("red", 220, 30, 30), ("green", 30, 170, 50), ("blue", 30, 60, 220),
        ("yellow", 235, 215, 35), ("white", 240, 240, 240), ("black", 20, 20, 20),
    ];

    public static readonly IReadOnlyList<string> Shapes = ["circle", "square", "triangle"];

    /// <summary>The guidance the tiny-shapes models were trained for (their README: at SD's 7.5 the multistep solvers fall apart).</summary>
    public const double TrainedGuidance = 3.0;

    /// <summary>Every caption of the grammar: colour, then shape, then background, each in list order.</summary>
    public static readonly IReadOnlyList<ShapesCaption> All =
    [
        .. from colour in Palette
           from shape in Shapes
           from background in Palette
           where background.Name != colour.Name
           select new ShapesCaption(colour.Name, shape, background.Name),
    ];

    public override string ToString() => $"a {Colour} {Shape} on a {Background} background";

    /// <summary>The caption <paramref name="prompt"/> is, if it is one of the grammar (exactly, as the model was trained on it).</summary>
    public static ShapesCaption? TryParse(string prompt)
    {
        string[] w = prompt.Split(' ');
        if (w is not ["a", var colour, var shape, "on", "a", var background, "background"]) return null;
        var caption = new ShapesCaption(colour, shape, background);
        return All.Contains(caption) ? caption : null;
    }
}
